"""The paper's findings (section 4) as checks on our numbers.

Per-seed errors of every table cell are collected from the evaluations (``collect``). Findings are checked on
the top-1 error, paired by seed (all runs of one seed share a data order and a staged initialisation), by the
95% confidence interval of the mean per-seed difference (Student's t with n - 1 degrees of freedom): a claim is
*supported* when the whole interval lies on the paper's side of zero, *not supported* when it lies on the
other side, and *inconclusive* when it contains zero (or with a single seed, which has no spread). For an
inconclusive comparison the check says how many seeds would make an interval at the measured spread narrower
than the paper's difference (or, where the paper gives none, than the measured one).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .grids import SCALE_LABELS
from .plan import Plan
from .published import EVAL_PROTOCOLS, TABLE4, paper_value


def stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: no spread)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: Sequence[float], sign: bool = False) -> str:
    """'mean ± std' with two decimals (``sign``: with + or -); the mean alone for one seed."""
    mean, std = stats(values)
    m = f"{mean:+.2f}" if sign else f"{mean:.2f}"
    return m if std is None else f"{m} ± {std:.2f}"


def collect(plan: Plan, evals: dict[str, Any]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """Per-seed [top-1, top-5] errors (%) of every table cell: {table: {cell: {seed: [t1, t5]}}}.

    Cells: Table 3 and 4 "<arch>@<label>" (label: the paper's training scale), Table 5 "<arch>@<protocol>",
    Table 6 "<protocol>"; "perq" holds the error at each test scale ("<arch>@<label>@<Q>").
    """
    cells: dict[str, dict[str, dict[int, list[float]]]] = {t: defaultdict(dict) for t in ("3", "4", "5", "6", "perq")}
    for e in plan.evals:
        res = evals.get(e.name)
        if res is None:
            continue
        if e.kind == "scales":
            r = plan.run(e.runs[0])
            key = f"{r.arch}@{r.label}"
            cells["3"][key][r.seed] = res["per_q"][str(res["single_q"])]
            if (r.arch, r.label) in TABLE4:  # the paper's Table 4 leaves out A and A-LRN
                cells["4"][key][r.seed] = res["multi"]
            for q, err in res["per_q"].items():
                cells["perq"][f"{key}@{q}"][r.seed] = err
        else:
            for run_name in e.runs:
                r = plan.run(run_name)
                for p, err in res["rows"][run_name].items():
                    cells["5"][f"{r.arch}@{p}"][r.seed] = err
            for p, err in res["rows"]["fused"].items():
                cells["6"][p][e.seed] = err
    return {t: dict(v) for t, v in cells.items()}


@dataclass
class Comparison:
    """Top-1 error of ``treatment`` against ``baseline`` (each the mean of its cells, per seed).

    ``expect`` "lower": the paper finds the treatment better. "not_lower": the paper finds it no better (LRN).
    """

    label: str
    treatment: list[tuple[str, str]]  # (table, cell)
    baseline: list[tuple[str, str]]
    expect: str = "lower"


@dataclass
class Claim:
    key: str
    text: str
    comparisons: list[Comparison]
    note: str = ""


def claims(scale_label: Callable[[str], str]) -> list[Claim]:
    """The paper's findings (section 4) as comparisons of table cells. ``scale_label`` names a paper scale
    ("256") the way the report shows ours ("S=32")."""

    def t3(*cells: str) -> list[tuple[str, str]]:
        return [("3", c) for c in cells]

    cde = ("C", "D", "E")
    fixed = [f"{a}@{s}" for a in ("B", "C", "D", "E") for s in ("256", "384") if (a, s) in TABLE4]
    jit = [f"{a}@256-512" for a in cde]
    s256, s384, sj = scale_label("256"), scale_label("384"), scale_label("256-512")
    return [
        Claim(
            "lrn",
            "LRN does not help (A-LRN vs A, Table 3)",
            [Comparison(f"A-LRN vs A at {s256}", t3("A-LRN@256"), t3("A@256"), "not_lower")],
        ),
        Claim(
            "depth",
            f"Error falls with depth (Table 3, {s256})",
            [
                Comparison(f"B (13 layers) vs A (11) at {s256}", t3("B@256"), t3("A@256")),
                Comparison(f"D (16) vs B (13) at {s256}", t3("D@256"), t3("B@256")),
                Comparison(f"E (19) vs A (11) at {s256}", t3("E@256"), t3("A@256")),
            ],
            note="the paper finds the error saturating at 19 layers: E 27.3 vs D 27.0 at S=256, 25.5 vs 25.6 "
            "jittered; D vs E is shown below the table without a verdict",
        ),
        Claim(
            "filters",
            f"Small filters, deeper, beat large filters, shallower (section 4.1, {s256})",
            [Comparison(f"B (13 layers, 3x3) vs B-5x5 (8 layers, 5x5) at {s256}", t3("B@256"), t3("B-5x5@256"))],
            note="the paper measures B-5x5's top-1 error 7% above B's (one centre crop) and gives no Table 3 "
            "row; the paper difference is B's 28.7 against 7% more (30.7)",
        ),
        Claim(
            "conv1",
            "1x1 convs (C) help less than 3x3 (D) (Table 3, all three training scales)",
            [
                Comparison(
                    f"D vs C, mean over {s256}, {s384}, {sj}",
                    t3(*[f"D@{s}" for s in SCALE_LABELS]),
                    t3(*[f"C@{s}" for s in SCALE_LABELS]),
                )
            ],
        ),
        Claim(
            "jitter",
            "Scale jittering in training beats a fixed S (C, D, E; at one test scale, Table 3, and at "
            "several, Table 4)",
            [
                Comparison(f"{sj} vs {s} at one test scale", t3(*jit), t3(*[f"{a}@{lab}" for a in cde]))
                for s, lab in ((s256, "256"), (s384, "384"))
            ]
            + [
                Comparison(
                    f"{sj} vs {s} at several test scales", [("4", c) for c in jit], [("4", f"{a}@{lab}") for a in cde]
                )
                for s, lab in ((s256, "256"), (s384, "384"))
            ],
        ),
        Claim(
            "multiscale",
            "Multi-scale testing beats one test scale (Table 4 vs Table 3)",
            [
                Comparison("fixed-S nets (B; C, D, E at both fixed S)", [("4", c) for c in fixed], t3(*fixed)),
                Comparison("jittered nets (C, D, E)", [("4", c) for c in jit], t3(*jit)),
            ],
        ),
        Claim(
            "densecrop",
            "Dense + multi-crop beats either alone (Table 5, D and E jittered)",
            [
                Comparison(
                    "dense+multi-crop vs dense",
                    [("5", f"{a}@dense+multicrop") for a in "DE"],
                    [("5", f"{a}@dense") for a in "DE"],
                ),
                Comparison(
                    "dense+multi-crop vs multi-crop",
                    [("5", f"{a}@dense+multicrop") for a in "DE"],
                    [("5", f"{a}@multicrop") for a in "DE"],
                ),
            ],
        ),
        Claim(
            "fusion",
            "Fusing D and E beats each net (Table 6 vs Table 5, mean over the three protocols)",
            [
                Comparison(
                    f"D+E fused vs {a}", [("6", p) for p in EVAL_PROTOCOLS], [("5", f"{a}@{p}") for p in EVAL_PROTOCOLS]
                )
                for a in "DE"
            ],
        ),
    ]


def _side(refs: list[tuple[str, str]], cells: dict[str, dict[str, dict[int, list[float]]]]) -> dict[int, float] | None:
    """One side of a comparison per seed: the mean top-1 error of its cells, over the seeds they all have."""
    per = [cells.get(t, {}).get(c) for t, c in refs]
    if any(p is None for p in per):
        return None
    seeds = set.intersection(*(set(p) for p in per))
    return {s: sum(p[s][0] for p in per) / len(per) for s in sorted(seeds)}


def _paper_side(refs: list[tuple[str, str]]) -> float | None:
    """One side of a comparison in the paper's tables: the mean of its cells (None when one is missing)."""
    vals = [paper_value(t, c) for t, c in refs]
    return None if any(v is None for v in vals) else sum(vals) / len(vals)


def check(comp: Comparison, cells: dict[str, dict[str, dict[int, list[float]]]]) -> dict[str, Any]:
    """Evaluate one comparison on our per-seed numbers and on the paper's: verdict, means, spread."""

    out: dict[str, Any] = dict(label=comp.label, expect=comp.expect)
    pt, pb = _paper_side(comp.treatment), _paper_side(comp.baseline)
    out["paper_diff"] = None if pt is None or pb is None else round(pt - pb, 2)
    t, b = _side(comp.treatment, cells), _side(comp.baseline, cells)
    if t is None or b is None:
        out.update(verdict="not measured", reason="a run of this comparison is not in the plan")
        return out
    seeds = sorted(set(t) & set(b))
    diffs = [t[s] - b[s] for s in seeds]
    mean, std = stats(diffs)
    out.update(
        seeds=seeds,
        treatment=[t[s] for s in seeds],
        baseline=[b[s] for s in seeds],
        diffs=diffs,
        diff_mean=mean,
        diff_std=std,
    )
    if std is None:
        way = "lower" if mean < 0 else "higher" if mean > 0 else "equal"
        out.update(verdict="inconclusive", reason=f"one seed, no spread (treatment {way} by {abs(mean):.2f})")
        return out
    lo, hi = interval(diffs)
    out.update(ci95=[lo, hi])
    ci = f"{mean:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}]"
    if comp.expect == "lower":
        if hi < 0:
            out.update(verdict="supported", reason=f"lower: {ci}")
        elif lo > 0:
            out.update(verdict="not supported", reason=f"higher: {ci}")
        else:
            out.update(verdict="inconclusive", reason=f"{ci} contains 0")
    else:  # the paper says the treatment does not help: contradicted only by an interval wholly below zero
        if hi < 0:
            out.update(verdict="not supported", reason=f"the treatment helps: {ci}")
        else:
            out.update(verdict="supported", reason=f"no gain shown: {ci}")
    if out["verdict"] == "inconclusive":
        effect = abs(out["paper_diff"]) if out["paper_diff"] else abs(mean)
        n = seeds_to_resolve(effect, std)
        out["seeds_needed"] = n
        size = "the paper's difference" if out["paper_diff"] else "the measured difference"
        out["reason"] += (
            f"; {n} seeds would resolve {size} ({effect:.2f}) at this spread (sd {std:.2f})"
            if n
            else f"; the spread (sd {std:.2f}) is too wide to resolve {size} ({effect:.2f}) "
            f"with up to {MAX_SEEDS} seeds"
        )
    return out


MAX_SEEDS = 100


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student's t quantile (scipy, which scikit-learn brings)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def interval(diffs: Sequence[float]) -> tuple[float, float]:
    """The 95% confidence interval of the mean of paired differences: mean ± t(0.975, n - 1) sd / sqrt(n)."""
    mean, std = stats(diffs)
    half = t_quantile(len(diffs) - 1) * (std or 0.0) / math.sqrt(len(diffs))
    return mean - half, mean + half


def seeds_to_resolve(effect: float, std: float) -> int | None:
    """The fewest seeds n whose 95% interval half-width t(0.975, n - 1) sd / sqrt(n) is below ``effect``, at a
    per-seed spread ``std`` (None beyond ``MAX_SEEDS``): a difference that large would then exclude zero."""
    if std == 0:
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if t_quantile(n - 1) * std / math.sqrt(n) < effect:
            return n
    return None


def verdict(results: list[dict[str, Any]]) -> str:
    """A claim's verdict from its comparisons' (see the module doc)."""
    v = [r["verdict"] for r in results if r["verdict"] != "not measured"]
    if not v:
        return "not measured"
    if "not supported" in v:
        return "not supported" if v.count("not supported") == len(v) else "partly contradicted"
    if all(x == "supported" for x in v):
        return "supported"
    if "supported" in v:
        return f"partly supported ({v.count('supported')} of {len(v)} comparisons)"
    return "inconclusive"


__all__ = [
    "Claim",
    "Comparison",
    "check",
    "claims",
    "collect",
    "fmt",
    "interval",
    "seeds_to_resolve",
    "stats",
    "verdict",
]
