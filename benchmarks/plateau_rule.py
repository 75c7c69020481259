"""How often a plateau rule fires on validation noise, and how soon it sees a true plateau (issue 21).

Simulated curves: the validation top-1 error of n images is a binomial draw around a true error rate (times
``--noise`` for the extra epoch-to-epoch wobble of SGD at a high learning rate). For each rule of
:class:`vggnet.training.Plateau` this prints, over ``--trials`` curves:

- false decays: the share of curves still falling by 2, 1, 0.5 or 0.25 points an epoch (from 60% error,
  15 epochs) on which the rule decreases the learning rate;
- plateaus: the share of flat curves (at 40% and 5% error) on which it fires within 10 epochs, and the mean
  epoch at which it does;
- a realistic descent (25% + 45% e^(-t/8), 40 epochs): the mean epoch of the first decrease, how far the true
  error then still was above its floor, and the share of first decreases made while the true curve still fell
  by more than 0.5 points an epoch.

``--runs DIR ...`` replays the rules on recorded curves (run folders' metrics.jsonl, best trained at one
learning rate: ``--plateau best --lr-patience 1000 --lr-decays 0``): where each rule's first decrease would
have fallen, and how much lower the curve went at the same learning rate afterwards.

    python benchmarks/plateau_rule.py                  # simulation, n = 1,000, 2,000 curves a cell
    python benchmarks/plateau_rule.py --runs /tmp/pilot/A /tmp/pilot/B
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vggnet.training.schedule import Plateau

RULES = {
    "best, patience 1 (old demo/grid)": dict(rule="best", patience=1),
    "best, patience 2 (old default)": dict(rule="best", patience=2),
    "best, patience 3": dict(rule="best", patience=3),
    "trend, window 4": dict(rule="trend", window=4),
    "trend, window 5 (new default)": dict(rule="trend", window=5),
    "trend, window 6": dict(rule="trend", window=6),
}


def first_decay(errors, spec: dict) -> int | None:
    """The epoch index (0-based) after which ``spec``'s rule first decreases the learning rate, or None."""
    p = Plateau(
        lr=1.0,
        patience=spec.get("patience", 2),
        threshold=1e-3,
        max_decays=1,
        rule=spec["rule"],
        window=spec.get("window", 5),
    )
    for t, e in enumerate(errors):
        p.step(float(e))
        if p.decays:
            return t
    return None


def simulate(n: int, noise: float, trials: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def noisy(true):
        true = np.asarray(true)
        return np.clip(true + noise * (rng.binomial(n, true) / n - true), 0, 1)

    slopes = (-2, -1, -0.5, -0.25)
    print(f"\nn = {n} validation images, noise {noise:g} x binomial, {trials} curves a cell")
    print(
        "| rule | "
        + " | ".join(f"false decay, falling {-s:g} pt/ep" for s in slopes)
        + " | plateau 40%: fired <= 10 ep | mean epoch | plateau 5%: fired | mean epoch "
        "| descent: first decay epoch | gap to floor (pt) | decays while falling > 0.5 pt/ep |"
    )
    print("|---" * 12 + "|")
    t40 = np.arange(40)
    true_exp = 0.25 + 0.45 * np.exp(-t40 / 8)
    slope_exp = -45 / 8 * np.exp(-t40 / 8)
    for name, spec in RULES.items():
        cells = []
        for s in slopes:
            true = 0.6 + s / 100 * np.arange(15)
            cells.append(f"{np.mean([first_decay(noisy(true), spec) is not None for _ in range(trials)]):.3f}")
        for p in (0.4, 0.05):
            d = [first_decay(noisy(np.full(30, p)), spec) for _ in range(trials)]
            cells.append(f"{np.mean([x is not None and x < 10 for x in d]):.3f}")
            cells.append(f"{np.mean([x + 1 for x in d if x is not None]):.1f}")
        d = [x for x in (first_decay(noisy(true_exp), spec) for _ in range(trials)) if x is not None]
        cells.append(f"{np.mean(d) + 1:.1f}")
        cells.append(f"{100 * np.mean([true_exp[x] - 0.25 for x in d]):.2f}")
        cells.append(f"{np.mean([slope_exp[x] < -0.5 for x in d]):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def replay(folders: list[str]) -> None:
    print(
        "\nrecorded curves at one learning rate: the epoch of each rule's first decrease (1-based), the error "
        "there, and the best error the run reached later at the same rate (points lower)"
    )
    print("| run | epochs | " + " | ".join(RULES) + " |")
    print("|---" * (len(RULES) + 2) + "|")
    for f in folders:
        rows = [json.loads(line) for line in (Path(f) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        errs = [r["val_top1_err"] for r in rows if r.get("kind") == "epoch"]
        cells = []
        for spec in RULES.values():
            t = first_decay(errs, spec)
            if t is None:
                cells.append("none")
            else:
                later = min(errs[t + 1 :], default=errs[t])
                cells.append(f"{t + 1} ({100 * errs[t]:.1f}%, later {100 * max(0.0, errs[t] - later):.1f} lower)")
        print(f"| {Path(f).name} | {len(errs)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="validation images")
    ap.add_argument("--noise", type=float, nargs="+", default=[1.0, 1.5], help="multiples of the binomial noise")
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", nargs="*", default=[], help="run folders trained at one lr to replay the rules on")
    a = ap.parse_args()
    if a.runs:
        replay(a.runs)
        return
    for k in a.noise:
        simulate(a.n, k, a.trials, a.seed)


if __name__ == "__main__":
    main()
