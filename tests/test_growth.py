"""The progressive-growing schedule: stages, fade alpha, per-stage batches and the sampler position."""
import pytest

from gan_core.config import ConfigError
from gan_core.growth import Fixed, Growth, parse_phase_batch


def _growth(**kw):
    args = dict(start=4, final=16, fade_images=256, stable_images=128, base_batch=32, batch=((4, 4), (8, 2)))
    return Growth(**{**args, **kw})


def test_stages_grow_from_start_to_final_with_a_fade_before_each_new_resolution():
    g = _growth()
    kinds = [(s.resolution, s.fade, s.steps, s.multiplier) for s in g.segments()]
    # 4 px stable: 128 images at 4 x 32 = 1 step; 8 px fade 256 / 64 = 4, stable 2; 16 px fade 8, then open
    assert kinds == [(4, False, 1, 4), (8, True, 4, 2), (8, False, 2, 2), (16, True, 8, 1), (16, False, None, 1)]
    assert g.growth_steps == 15
    assert g.at(0).resolution == 4 and g.at(0).alpha == 1.0
    assert [g.at(s).alpha for s in range(1, 5)] == [0.0, 0.25, 0.5, 0.75]  # k / n: starts at the old stage
    assert g.at(5).alpha == 1.0 and g.at(5).resolution == 8
    assert g.at(15) == g.at(10_000) and g.at(15).resolution == 16 and not g.at(15).fading


def test_the_sampler_position_is_the_sum_of_the_batches_every_earlier_step_read():
    g = _growth()
    pos = 0
    for step in range(40):
        assert g.position(step) == pos, step
        pos += g.batches(step)


def test_a_fixed_schedule_reads_n_critic_batches_per_step():
    assert Fixed(5).position(3) == 15 and Fixed(5).batches(7) == 5 and Fixed(5).at(2) is None


def test_starting_at_the_final_resolution_is_one_open_stable_stage():
    g = _growth(start=16, final=16)
    assert [s.steps for s in g.segments()] == [None] and g.growth_steps == 0 and g.at(0).alpha == 1.0


@pytest.mark.parametrize("text, reason", [
    ("4", "RESOLUTION:MULTIPLIER"), ("4:x", "RESOLUTION:MULTIPLIER"), ("6:2", "power of two"),
    ("4:0", "must be >= 1"), ("4:2,4:3", "listed twice")])
def test_bad_phase_batches_name_the_field_and_the_entry(text, reason):
    with pytest.raises(ConfigError, match=rf"^family.progan.phase_batch: .*{reason}"):
        parse_phase_batch(text, "family.progan.phase_batch")


def test_phase_batches_parse():
    assert parse_phase_batch(" 4:4, 8:2 ,", "f") == {4: 4, 8: 2} and parse_phase_batch("", "f") == {}
