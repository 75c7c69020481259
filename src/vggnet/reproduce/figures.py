"""The report's figures (PNG, Agg): error against depth, error against the test scale, and the learning curves
of the staged runs. Each takes the per-seed cells of ``findings.collect`` and draws ours beside the paper's."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..architectures import weight_layers
from ..plots import read_epochs
from .findings import stats
from .grids import SCALE_LABELS
from .plan import Plan
from .published import TABLE3, paper_scale_text

Cells = dict[str, dict[str, dict[int, list[float]]]]


def draw(plan: Plan, cells: Cells, scale_text: Callable[[str], str]) -> list[Path]:
    """Write the three figures into OUT/plots/ and return their paths. ``scale_text`` names our scale of a
    paper's label ("256" -> "S=64")."""
    import matplotlib  # here, not at the top: matplotlib takes a second to import and only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = plan.out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, figure in (
        ("error_vs_depth.png", error_vs_depth),
        ("error_vs_test_scale.png", error_vs_test_scale),
        ("learning_curves.png", learning_curves),
    ):
        fig = figure(plt, plan, cells, scale_text)
        fig.tight_layout()
        files.append(folder / name)
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


def _mean_std(per: dict[int, list[float]] | None) -> tuple[float, float]:
    """Mean and spread of a cell's top-1 errors over seeds (NaN for a cell that did not run)."""
    if not per:
        return math.nan, 0.0
    m, s = stats([v[0] for v in per.values()])
    return m, s or 0.0


def _legend(ax: Any) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def error_vs_depth(plt: Any, plan: Plan, cells: Cells, scale_text: Callable[[str], str]) -> Any:
    """Table 3 against depth: ours (with the spread) and the paper's, for each training scale. The 3x3 nets
    A, B, D, E are joined by a line; C (1x1 convs, as deep as D) is a lone marker beside D."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    archs = ["A", "B", "C", "D", "E"]
    x_of = {a: i for i, a in enumerate(archs)}
    n = len(plan.seeds)
    spread = f"mean ± std, {n} seeds" if n > 1 else "1 seed"
    for ax, title in zip(axes, ("ours", "paper")):
        for i, (label, marker) in enumerate(zip(SCALE_LABELS, "osd")):
            nets = [a for a in archs if (a, label) in TABLE3]
            if title == "ours":
                ms = {a: _mean_std(cells["3"].get(f"{a}@{label}")) for a in nets}
                name = scale_text(label)
            else:
                ms = {a: (TABLE3[(a, label)][0], 0.0) for a in nets}
                name = paper_scale_text(label)
            line = [a for a in nets if a != "C"]
            shift = (i - 1) * 0.06  # keep error bars of the three scales apart
            h = ax.errorbar(
                [x_of[a] + shift for a in line],
                [ms[a][0] for a in line],
                yerr=[ms[a][1] for a in line],
                marker=marker,
                capsize=3,
                label=name,
            )
            if "C" in ms:
                ax.errorbar(
                    [x_of["C"] + shift],
                    [ms["C"][0]],
                    yerr=[ms["C"][1]],
                    marker=marker,
                    capsize=3,
                    color=h[0].get_color(),
                    ls="none",
                )
        ax.set_xticks(range(len(archs)), [f"{a}\n{weight_layers(a)} layers" for a in archs])
        ax.set(
            ylabel="top-1 error % (one test scale)",
            title=f"Table 3, {title}" + (f" ({spread})" if title == "ours" else ""),
        )
        _legend(ax)
    return fig


def error_vs_test_scale(plt: Any, plan: Plan, cells: Cells, scale_text: Callable[[str], str]) -> Any:
    """Dense error at each Q on its own, for the nets with several training scales; dotted: Table 4's
    multi-scale average."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, arch in zip(axes, ("C", "D", "E")):
        for label in SCALE_LABELS:
            key = f"{arch}@{label}"
            qs = sorted({int(k.rsplit("@", 1)[1]) for k in cells["perq"] if k.startswith(key + "@")})
            if not qs:
                continue
            ms = [_mean_std(cells["perq"].get(f"{key}@{q}")) for q in qs]
            line = ax.errorbar(
                qs,
                [m for m, _ in ms],
                yerr=[s for _, s in ms],
                marker="o",
                capsize=3,
                label=f"train {scale_text(label)}",
            )
            multi = _mean_std(cells["4"].get(key))[0]
            ax.axhline(multi, color=line[0].get_color(), ls=":", lw=1)
        ax.set(title=f"{arch}: dense, one Q at a time (dotted: multi-scale)", xlabel="test scale Q")
        _legend(ax)
    axes[0].set_ylabel("top-1 error %")
    return fig


def learning_curves(plt: Any, plan: Plan, cells: Cells, scale_text: Callable[[str], str]) -> Any:
    """Validation error of the staged chains of the first seed: A -> X@256 -> X@384 -> X@jittered."""
    seed = plan.seeds[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    by = {(r.arch, r.label): r for r in plan.runs if r.seed == seed}
    colours = {1: "C0", 2: "C1", 3: "C2", 4: "C3"}
    for ax, arch in zip(axes, ("C", "D", "E")):
        chain, cell = [], (arch, "256-512")
        while cell in by:
            chain.insert(0, by[cell])
            r = by[cell]
            cell = next(((s.arch, s.label) for s in by.values() if s.name == r.depends), None)
        start = 0
        for r in chain:
            rows = read_epochs(r.folder)
            if not rows:
                continue
            xs = [start + m["epoch"] for m in rows]
            ax.plot(
                xs,
                [100 * m["val_top1_err"] for m in rows],
                "o-",
                ms=3,
                color=colours.get(r.stage, "k"),
                label=f"{r.arch} {scale_text(r.label)}",
            )
            ax.axvline(start + 0.5, color="grey", ls=":", lw=1)
            start = xs[-1]
        ax.set(title=f"staged training of {arch} (seed {seed})", xlabel="epoch (all stages)")
        _legend(ax)
    axes[0].set_ylabel("val top-1 error % (one centre crop)")
    return fig


__all__ = ["draw", "error_vs_depth", "error_vs_test_scale", "learning_curves"]
