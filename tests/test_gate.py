import math

from flows.gate import Scored, decide


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
