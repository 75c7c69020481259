"""The plateau schedule's decision (issue 21): validation noise does not fire it, a true plateau does."""

from __future__ import annotations

import numpy as np
import pytest

from vggnet.config import TrainConfig
from vggnet.training.schedule import Plateau, window_trend

N = 1000  # validation images: the small grid's and the demo's


def _first_decay(errors, **rule) -> int | None:
    p = Plateau(lr=0.01, patience=rule.pop("patience", 2), threshold=1e-3, max_decays=2, **rule)
    for t, e in enumerate(errors):
        p.step(float(e))
        if p.decays:
            return t
    return None


def _noisy(rng, true):
    """The validation error of N images around a true error rate: a binomial draw."""
    return rng.binomial(N, np.asarray(true)) / N


def test_window_trend_is_the_least_squares_change():
    assert window_trend([0.5, 0.4, 0.3, 0.2]) == pytest.approx(-0.3)
    assert window_trend([0.3, 0.3, 0.3]) == 0.0
    # one bad epoch at the end of a falling window does not make the fitted line rise
    assert window_trend([0.50, 0.48, 0.46, 0.44, 0.47]) < 0
    errs = np.random.default_rng(0).random(7)
    slope = np.polyfit(np.arange(7), errs, 1)[0]
    assert window_trend(list(errs)) == pytest.approx(slope * 6)


def test_noisy_descent_does_not_fire_the_trend_rule_and_does_fire_the_old_one():
    """A curve falling by 2 points an epoch for 15 epochs (from 60%) plus binomial noise at n = 1,000: the
    trend rule decreases the rate on almost none; the old rule (no new best for 2 epochs) on about a quarter."""
    rng = np.random.default_rng(21)
    true = 0.6 - 0.02 * np.arange(15)
    curves = [_noisy(rng, true) for _ in range(400)]
    new = np.mean([_first_decay(c) is not None for c in curves])
    old = np.mean([_first_decay(c, rule="best", patience=1) is not None for c in curves])
    assert new <= 0.02
    assert old >= 0.15


def test_true_plateau_fires_the_trend_rule_within_ten_epochs():
    rng = np.random.default_rng(22)
    for level in (0.4, 0.05):
        fired = [_first_decay(_noisy(rng, np.full(20, level))) for _ in range(400)]
        assert np.mean([t is not None and t < 10 for t in fired]) >= 0.95
        # and never before the window is full
        assert min(t for t in fired if t is not None) >= 4


def test_window_restarts_after_a_decrease_and_the_last_plateau_ends_training():
    p = Plateau(lr=0.1, patience=2, threshold=1e-3, max_decays=1, window=3)
    for e in (0.5, 0.5, 0.5):
        p.step(e)
    assert (p.decays, p.lr, p.at_lr) == (1, pytest.approx(0.01), [])
    p.step(0.2)
    p.step(0.2)
    assert not p.done  # two epochs at the new rate: the window is not full yet
    p.step(0.2)
    assert p.done


def test_schedule_state_survives_a_checkpoint():
    p = Plateau(lr=0.1, patience=2, threshold=1e-3, max_decays=2)
    for e in (0.9, 0.8, 0.85):
        p.step(e)
    q = Plateau(lr=0.1, patience=2, threshold=1e-3, max_decays=2)
    q.load_state_dict(p.state_dict())
    for e in (0.84, 0.86, 0.85):
        p.step(e)
        q.step(e)
    assert p.state_dict() == q.state_dict()


def test_the_default_and_the_presets_use_the_trend_rule():
    from vggnet.config import PRESETS
    from vggnet.reproduce.grids import GRIDS

    assert TrainConfig().plateau == "trend"
    assert all(p.get("plateau", "trend") == "trend" for p in PRESETS.values())
    assert all(g.base.get("plateau", "trend") == "trend" for g in GRIDS.values())
    with pytest.raises(ValueError, match="--plateau"):
        TrainConfig(plateau="sometimes")
    with pytest.raises(ValueError, match="--lr-window"):
        TrainConfig(lr_window=1)
