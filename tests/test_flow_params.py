from gan_core.models import ARCHS


def test_flow_offers_every_family_as_a_choice():
    from flows.pipeline import pipeline

    props = pipeline.parameters.model_dump()["properties"]
    choices = next(a["enum"] for a in props["arch"]["anyOf"] if "enum" in a)
    assert choices == list(ARCHS)  # the Prefect UI's run form shows exactly the registered families
