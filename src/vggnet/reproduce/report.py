"""The report of a reproduction: REPORT.md (our numbers beside the paper's, table by table, and the findings
checked), results.json (every number, per seed and aggregated, with provenance) and the figures."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import runs as runs_mod
from ..files import atomic_write_text
from ..report import markdown_table, provenance
from ..scales import scale_step
from .figures import draw as draw_figures
from .findings import check, claims, collect, fmt, stats, verdict
from .grids import SCALE_LABELS, SMALL_DESIGN
from .notes import ReportNotes, last_epoch_trend
from .plan import Plan
from .published import (
    PAPER_B5X5_RELATIVE,
    PAPER_Q_MULTI,
    PAPER_Q_SINGLE,
    PAPER_SCALES,
    TABLE3,
    TABLE4,
    TABLE5,
    TABLE6,
    TABLE6_SUBMISSION,
    paper_scale_text,
)


class Report(ReportNotes):
    """Builds REPORT.md, results.json and the plots from a plan and its results."""

    def __init__(self, plan: Plan, outcome: dict[str, Any], command: str) -> None:
        self.plan, self.outcome, self.command = plan, outcome, command
        self.cells = collect(plan, outcome["evals"])
        self.small = plan.grid != "paper"
        # our scales by the paper's label (the first seed's runs define them)
        self.scales: dict[str, tuple[int, int]] = {}
        for r in plan.runs:
            self.scales.setdefault(r.label, r.scale)
        self.checks = [(c, [check(x, self.cells) for x in c.comparisons]) for c in claims(self.scale_text)]
        self.k = next((e.get("k", 5) for e in outcome["evals"].values()), 5)
        # flips as evaluated: off when the runs were trained without them (digits), whatever the grid says
        self.flip = all(e.get("flip", plan.flip) for e in outcome["evals"].values())
        classes = plan.runs[0].folder / runs_mod.CLASSES_FILE
        self.classes = len(json.loads(classes.read_text())) if classes.is_file() else None

    def scale_text(self, label: str) -> str:
        s = self.scales.get(label, PAPER_SCALES.get(label, (0, 0)))
        return f"S={s[0]}" if s[0] == s[1] else f"S=[{s[0]},{s[1]}]"

    def _q_text(self, label: str, multi: bool) -> str:
        for e in self.plan.evals:
            res = self.outcome["evals"].get(e.name)
            wanted = len(e.multi) > 1 or not multi  # a net tested at several scales, for the multi-scale column
            if e.kind == "scales" and res and wanted and self.plan.run(e.runs[0]).label == label:
                return ",".join(map(str, res["multi_qs"])) if multi else str(res["single_q"])
        return "-"

    def _cell(self, table: str, key: str) -> tuple[str, str]:
        per = self.cells.get(table, {}).get(key)
        if not per:
            return "not run", "not run"
        seeds = sorted(per)
        return fmt([per[s][0] for s in seeds]), fmt([per[s][1] for s in seeds])

    def _n_seeds(self) -> int:
        return len(self.plan.seeds)

    # -- tables

    def _scale_rows(
        self, table: str, paper: dict[tuple[str, str], tuple[float, float]], paper_q: dict[str, str], multi: bool
    ) -> str:
        """Table 3 or 4: the paper's rows (all of them at small scale; those that ran otherwise), then any
        other (net, scale) that ran, for recipes of other scales."""
        keys = [k for k in paper if self.small or f"{k[0]}@{k[1]}" in self.cells[table]]
        if table == "3" and ("B", "256") in keys and any(r.arch == "B-5x5" for r in self.plan.runs):
            keys.insert(keys.index(("B", "256")) + 1, ("B-5x5", "256"))  # section 4.1's control, beside B
        keys += [tuple(k.split("@")) for k in self.cells[table] if tuple(k.split("@")) not in [*paper, *keys]]
        rows = []
        for arch, label in keys:
            t1, t5 = self._cell(table, f"{arch}@{label}")
            p1, p5 = (f"{v:.1f}" for v in paper[(arch, label)]) if (arch, label) in paper else ("-", "-")
            if (arch, label) == ("B-5x5", "256") and ("B", label) in paper:
                p1, p5 = f"B + 7% ({PAPER_B5X5_RELATIVE * paper[('B', label)][0]:.1f})", "-"  # section 4.1
            s_paper = paper_scale_text(label) if label in PAPER_SCALES else "-"
            rows.append(
                [
                    arch,
                    f"{s_paper} / {self.scale_text(label)}",
                    f"{paper_q.get(label, '-')} / {self._q_text(label, multi)}",
                    t1,
                    t5,
                    p1,
                    p5,
                ]
            )
        headers = ["net", "train S (paper / ours)", "test Q (paper / ours)", *self._headers()]
        return markdown_table(headers, rows, "lllrrrr")

    def table3(self) -> str:
        return self._scale_rows("3", TABLE3, PAPER_Q_SINGLE, multi=False)

    def table4(self) -> str:
        return self._scale_rows("4", TABLE4, PAPER_Q_MULTI, multi=True)

    def table5(self) -> str:
        names = {"dense": "dense", "multicrop": "multi-crop", "dense+multicrop": "multi-crop & dense"}
        rows = []
        for (arch, p), (p1, p5) in TABLE5.items():
            t1, t5 = self._cell("5", f"{arch}@{p}")
            rows.append([f"{arch} ({self.scale_text('256-512')})", names[p], t1, t5, f"{p1:.1f}", f"{p5:.1f}"])
        return markdown_table(["net", "protocol", *self._headers()], rows, "llrrrr")

    def table6(self) -> str:
        names = {"dense": "dense", "multicrop": "multi-crop", "dense+multicrop": "multi-crop & dense"}
        rows = []
        for p, (p1, p5) in TABLE6.items():
            t1, t5 = self._cell("6", p)
            rows.append([f"D + E ({self.scale_text('256-512')})", names[p], t1, t5, f"{p1:.1f}", f"{p5:.1f}"])
        return markdown_table(["fused nets", "protocol", *self._headers()], rows, "llrrrr")

    def _headers(self) -> list[str]:
        """The number columns of every table: ours (mean ± std over seeds), then the paper's."""
        n = self._n_seeds()
        spread = f"mean ± std, {n} seeds" if n > 1 else "1 seed"
        return [f"ours top-1 err % ({spread})", f"ours top-{self.k} err %", "paper top-1 %", "paper top-5 %"]

    def findings(self) -> str:
        rows = []
        for claim, results in self.checks:
            for i, r in enumerate(results):
                ours = "not run"
                if "diff_mean" in r:
                    spread = f" ± {r['diff_std']:.2f}" if r["diff_std"] is not None else ""
                    ours = f"{r['diff_mean']:+.2f}{spread}"
                paper = "-" if r["paper_diff"] is None else f"{r['paper_diff']:+.2f}"
                mark = " †" if self.affected(claim.comparisons[i]) else ""
                rows.append(
                    [
                        claim.text if i == 0 else "",
                        verdict(results) if i == 0 else "",
                        r["label"] + mark,
                        paper,
                        ours,
                        f"{r['verdict']}: {r['reason']}",
                    ]
                )
        headers = [
            "paper's finding",
            "verdict at this scale",
            "comparison (top-1 error)",
            "paper difference",
            "our difference (per-seed mean ± std)",
            "comparison verdict",
        ]
        return markdown_table(headers, rows, "llllrl")

    def runs_table(self) -> str:
        rows = []
        for r in self.plan.runs:
            m = self.outcome["markers"].get(r.name, {})
            err = m.get("val_top1_err")
            rows.append(
                [
                    r.name,
                    r.stage,
                    r.arch,
                    self.scale_text(r.label),
                    r.depends or "random",
                    m.get("epochs", "-"),
                    "-" if err is None else f"{100 * err:.2f}",
                    f"{m.get('seconds', 0):.0f}" + (" (resumed)" if m.get("resumed") else ""),
                    "this command" if r.name in self.outcome["trained"] else "earlier",
                ]
            )
        headers = [
            "run",
            "stage",
            "net",
            "S",
            "initialised from",
            "epochs",
            "val top-1 err % (1 centre crop)",
            "train s",
            "trained by",
        ]
        return markdown_table(headers, rows, "lrllllrrl")

    # -- the whole report (the figures are drawn by figures.py)

    def markdown(self, plots: Sequence[Path]) -> str:
        """REPORT.md: the summary, the design (small grids), the findings, Tables 3-6, the figures, the runs."""
        sections = [
            self._summary(),
            self._design(),
            self._findings_section(),
            self._tables(),
            self._figures(plots),
            self._runs_section(),
        ]
        return "\n".join(line for section in sections for line in section) + "\n"

    def _summary(self) -> list[str]:
        """The title, the command, and what it cost on which machine with which code."""
        p, o = self.plan, self.outcome
        prov = o.get("provenance") or provenance(p.device)
        train_s = sum(m.get("seconds", 0) for m in o["markers"].values())
        eval_s = sum(e.get("seconds", 0) for e in o["evals"].values())
        hw = (
            prov.get("cpu", "?")
            + f", {prov.get('cpu_count')} cores"
            + (f"; GPUs: {', '.join(prov['gpus'])}" if prov.get("gpus") else "")
        )
        title = {"small": "small scale", "quick": "quick check", "medium": "an ImageNet subset at 224 crops"}.get(
            p.grid, "the paper's recipes"
        )
        return [
            f"# Reproducing VGG (Simonyan & Zisserman, ICLR 2015): {title}",
            "",
            f"Command: `{self.command}`",
            "",
            f"- Grid `{p.grid}`: {p.description}.",
            f"- Seeds: {', '.join(map(str, p.seeds))} ({len(p.runs)} training runs, {len(p.evals)} evaluations); "
            f"test-time flips {'on' if self.flip else 'off'}.",
            f"- Wall time of this command: {o['seconds'] / 60:.1f} min ({len(o['trained'])} runs trained, "
            f"{len(o['reused'])} reused; {p.jobs} job(s) at a time). Sum over runs: training {train_s / 60:.1f} min, "
            f"evaluation {eval_s / 60:.1f} min.",
            *self.history_lines(),
            f"- Hardware: {hw}. Software: torch {prov['torch']}, torchvision {prov['torchvision']}, Python "
            f"{prov['python']}" + (f", vggnet {prov['git']}" if prov.get("git") else "") + f". Date: {prov['date']}.",
            f"- Recipe: {self.recipe_text()}.",
            "",
        ]

    def _design(self) -> list[str]:
        """The small grid's design (written before the results) and how our scales stand for the paper's."""
        p, lines = self.plan, []
        if p.grid in ("small", "quick"):
            lines += [
                "## Design",
                "",
                "Written before the results, which follow it whatever they say.",
                "",
                SMALL_DESIGN.strip()
                + (
                    "\n\nThis is the quick check: the design's runs on a few images "
                    "for an epoch or two, not a measurement."
                    if p.grid == "quick"
                    else ""
                ),
                "",
            ]
        if self.small:
            step = scale_step(p.runs[0].config().crop_size)  # the paper's 32 at 224, proportional to the crop
            lines += [
                "Our scales stand for the paper's: "
                + ", ".join(f"{self.scale_text(lab)} for {paper_scale_text(lab)}" for lab in SCALE_LABELS)
                + f"; test scales Q likewise (Q = S for a fixed S, the middle of the range for a jittered one; three "
                f"scales {{S - {step}, S, S + {step}}} for the paper's {{S - 32, S, S + 32}}, or {{Smin, "
                f"middle, Smax}}, none below the crop size). Error rates on {self.classes or 'these'} classes are not "
                "comparable with ImageNet's 1000: compare the *differences* between rows, which is what the findings "
                "below do."
                + (
                    f" Top-5 error on {self.classes} classes is near 0 and says little."
                    if self.classes and self.classes <= 20
                    else ""
                ),
                "",
            ]
        return lines

    def _findings_section(self) -> list[str]:
        """The findings checked, with the notes that qualify them (depth saturation, convergence, caveats)."""
        n = self._n_seeds()
        lines = [
            "## Findings",
            "",
            "Each finding is checked on the top-1 error, paired by seed (the runs of one seed share the data order "
            "and the staged initialisation). Difference = treatment minus baseline, in points of top-1 error "
            "(negative: the treatment is better); cells that average several table rows use their mean. "
            "Each difference comes with its paired 95% confidence interval (Student's t, n - 1 degrees of "
            "freedom). *supported*: the interval lies wholly on the paper's side of zero; *not supported*: wholly "
            "on the other side; *inconclusive*: it contains zero"
            + (" (or one seed, which has no spread)" if n < 2 else "")
            + ", and the check says how many seeds would resolve a difference of the paper's "
            "size at the measured spread. For 'LRN does not help', supported means no gain shown (the interval "
            "is not wholly below zero).",
            "",
            self.findings(),
            "",
        ]
        note = self.depth_note()
        if note:
            lines += [f"Depth saturation (no verdict): {note}.", ""]
        still = self.convergence_note()
        if still:
            lines += [
                "Runs still improving at their last epoch (by the plateau schedule's own rule on the epochs at "
                "the run's last learning rate, one centre crop): "
                f"{still}. A run still improving was compared before it converged (the paper trains each net "
                "to the plateau of its validation error; so does every grid here, the epochs being caps).",
                "",
            ]
        caveats = self.caveats()
        if caveats:
            lines += ["**† Caveat: dense evaluation at this scale.** " + caveats[0], ""]
        return lines

    def _tables(self) -> list[str]:
        """Tables 3-6, ours beside the paper's."""
        return [
            "Section 4.1's control net B-5x5 (B with each pair of 3x3 convs replaced by one 5x5 conv) is the row "
            "beside B in Table 3; the paper gives its error only relative to B's (7% higher top-1, one centre crop, "
            "read here as 7% of B's error). Not reproduced: the 7-net ILSVRC submission of Table 6 "
            f"({TABLE6_SUBMISSION[0]}/{TABLE6_SUBMISSION[1]}) fuses nets of other recipes.",
            "",
            f"## Table 3: one test scale (dense evaluation{', no flips' if not self.flip else ', with flips'})",
            "",
            self.table3(),
            "",
            "## Table 4: several test scales (dense, posteriors averaged over Q)",
            "",
            self.table4(),
            "",
            "## Table 5: dense, multi-crop and both (jittered D and E, three test scales)",
            "",
            self.table5(),
            "",
            "Multi-crop: a 5x5 grid of crops per scale"
            + (" and of its flip (50 views)." if self.flip else " (25 views; no flips)."),
            "",
            "## Table 6: fusion of jittered D and E (posteriors averaged)",
            "",
            self.table6(),
            "",
        ]

    def _figures(self, plots: Sequence[Path]) -> list[str]:
        """The figures that were drawn, each with its caption."""
        lines = ["## Plots", ""]
        captions = {
            "error_vs_depth.png": "Top-1 error against depth (Table 3), ours and the paper's.",
            "error_vs_test_scale.png": "Top-1 error against the test scale Q, one Q at a time (dense); dotted: "
            "the multi-scale average of Table 4.",
            "learning_curves.png": "Validation error of the staged runs (first seed), stage after stage: "
            "A, then the fixed small scale, the large one, then jittered.",
        }
        for f in plots:
            lines += [f"![{f.stem}](plots/{f.name})", "", captions.get(f.name, ""), ""]
        return lines

    def _runs_section(self) -> list[str]:
        """Every run of the plan: its stage, source, epochs, validation error and time."""
        return [
            "## Runs",
            "",
            "Each run is a folder under runs/ (config.toml, weights, metrics.jsonl, learning curves); "
            "`vgg eval runs/NAME` evaluates one again.",
            "",
            self.runs_table(),
            "",
            "All numbers, per seed, are in results.json; the per-run evaluation results in eval/.",
        ]

    def data(self) -> dict[str, Any]:
        """results.json: the plan, every per-seed number, the aggregates, the checks, provenance."""

        def agg(per: dict[int, list[float]]) -> dict[str, Any]:
            seeds = sorted(per)
            m1, s1 = stats([per[s][0] for s in seeds])
            m5, s5 = stats([per[s][1] for s in seeds])
            return dict(per_seed={str(s): per[s] for s in seeds}, top1_mean=m1, top1_std=s1, top5_mean=m5, top5_std=s5)

        paper = {
            "3": {f"{a}@{lab}": v for (a, lab), v in TABLE3.items()},
            "4": {f"{a}@{lab}": v for (a, lab), v in TABLE4.items()},
            "5": {f"{a}@{p}": v for (a, p), v in TABLE5.items()},
            "6": dict(TABLE6),
        }
        return dict(
            command=self.command,
            grid=self.plan.grid,
            description=self.plan.description,
            seeds=self.plan.seeds,
            scales={lab: list(s) for lab, s in self.scales.items()},
            flip=self.flip,
            classes=self.classes,
            wall_s=self.outcome["seconds"],
            trained=self.outcome["trained"],
            reused=self.outcome["reused"],
            history=self.outcome.get("history", []),
            tables={t: {k: agg(v) for k, v in cells.items()} for t, cells in self.cells.items()},
            paper=paper,
            findings=[
                dict(
                    key=c.key,
                    claim=c.text,
                    verdict=verdict(r),
                    note=c.note,
                    comparisons=[dict(x, dense_caveat=self.affected(cp)) for x, cp in zip(r, c.comparisons)],
                )
                for c, r in self.checks
            ],
            caveats=self.caveats(),
            runs=[dict(asdict(r), marker=self.outcome["markers"].get(r.name)) for r in self.plan.runs],
            evals=self.outcome["evals"],
            provenance=self.outcome.get("provenance") or provenance(self.plan.device),
        )

    def write(self) -> Path:
        """Write plots, REPORT.md and results.json into the output folder; returns REPORT.md's path."""
        plots: list[Path] = []
        try:
            plots = draw_figures(self.plan, self.cells, self.scale_text)
        except Exception as e:  # noqa: BLE001 - a plotting problem never loses the numbers
            print(f"warning: plots failed ({type(e).__name__}: {e})", file=sys.stderr)
        out = self.plan.out
        report = out / "REPORT.md"
        text = self.markdown(plots)
        atomic_write_text(report, text)
        body = json.dumps(self.data(), indent=1, default=str)
        atomic_write_text(out / "results.json", body + "\n")
        return report


__all__ = ["Report", "last_epoch_trend"]
