import math

from flows.registry.gate import Scored, decide


def test_first_valid_model_becomes_champion():
    ok, why = decide(Scored(12.0, "fp"), None, 0.0)
    assert ok and "first" in why


def test_better_by_more_than_margin_is_promoted():
    assert decide(Scored(10.0, "fp"), Scored(12.0, "fp", "1"), 1.0)[0]
    ok, why = decide(Scored(11.5, "fp"), Scored(12.0, "fp", "1"), 1.0)
    assert not ok and "margin" in why
    assert not decide(Scored(12.0, "fp"), Scored(12.0, "fp", "1"), 0.0)[0]  # a tie keeps the champion


def test_different_fingerprints_are_never_compared():
    ok, why = decide(Scored(1.0, "new"), Scored(50.0, "old", "3"), 0.0)
    assert not ok and "fingerprint" in why and "old" in why


def test_non_finite_fid_is_never_promoted_even_first():
    for bad in (math.nan, math.inf):
        ok, why = decide(Scored(bad, "fp"), None, 0.0)
        assert not ok and "not finite" in why


def test_higher_is_better_metrics_gate_the_other_way():
    psnr = lambda v, version="": Scored(v, "fp", version, higher_is_better=True, metric="psnr_200")  # noqa: E731
    ok, why = decide(psnr(25.0), psnr(24.0, "1"), 0.5)
    assert ok and "psnr_200 25.0000 beats" in why and "higher is better" in why
    assert not decide(psnr(24.4), psnr(24.0, "1"), 0.5)[0]  # within the margin
    assert not decide(psnr(20.0), psnr(24.0, "1"), 0.0)[0]  # lower PSNR never wins
    assert not decide(psnr(math.inf), None, 0.0)[0]  # inf is not a score in either direction
