"""The notes of a reproduction's report that qualify its numbers: how each stage ran (recipe, earlier calls),
whether runs were still improving when they stopped, depth saturation, and the dense-evaluation caveat of small
crops. A mixin of :class:`vggnet.reproduce.report.Report`, which holds the plan, the outcome and the cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import TrainConfig
from ..plots import read_epochs
from ..training.schedule import Plateau
from .findings import Comparison, fmt
from .plan import Plan
from .published import EVAL_PROTOCOLS, TABLE3


def last_epoch_trend(errors: Sequence[float], threshold: float, rule: str = "trend", window: int = 5) -> str:
    """Whether a run was still improving at its last epoch, by the plateau schedule's own rule
    (:meth:`vggnet.training.Plateau.improving`); ``errors`` are the epochs at the run's last learning rate.

    ``trend``: "improving" when the fitted line through the last ``window`` errors falls by more than
    ``threshold`` (or fewer than ``window`` epochs ran at that rate), else "flat". ``best``: "improving" when
    the last error beats all before it by more than ``threshold``, "within" when it is the best by no more than
    that, else "flat"."""
    if rule == "trend":
        w = list(errors[-window:])
        return "improving" if len(w) < window or Plateau.trending_down(w, threshold) else "flat"
    best = min(errors[:-1])
    if Plateau.improves(errors[-1], best, threshold):
        return "improving"
    return "within" if errors[-1] < best else "flat"


def _at_last_lr(rows: list[dict[str, Any]]) -> list[float]:
    """The validation errors of the epochs trained at the last epoch's learning rate."""
    lr = rows[-1].get("lr")
    out: list[float] = []
    for r in reversed(rows):
        if r.get("lr") != lr:
            break
        out.append(r["val_top1_err"])
    return out[::-1]


class ReportNotes:
    """The notes of the report (see the module's docstring); ``Report`` provides the attributes below."""

    plan: Plan
    outcome: dict[str, Any]
    cells: dict[str, dict[str, dict[int, list[float]]]]

    def scale_text(self, label: str) -> str:  # provided by Report
        raise NotImplementedError

    def history_lines(self) -> list[str]:
        """Earlier calls into the output folder that trained runs (their wall time is the cost of the runs)."""
        earlier = self.outcome.get("history", [])[:-1]
        if not earlier:
            return []
        trained = [h for h in earlier if h["trained"]]
        text = "; ".join(
            f"{h['date']}: `{h['command']}`, {h['wall_s'] / 60:.1f} min, {h['trained']} runs trained, "
            f"{h['reused']} reused" + (f", vggnet {h['git']}" if h.get("git") else "")
            for h in trained
        )
        rest = len(earlier) - len(trained)
        if rest:
            text += ("; " if text else "") + f"{rest} call(s) that trained nothing"
        return [f"- Earlier calls into this folder: {text}."]

    def recipe_text(self) -> str:
        """Epochs and learning rate of each stage, and where the shared settings differ from the paper's."""
        stages = []
        for stage in sorted({r.stage for r in self.plan.runs}):
            cfg = next(r for r in self.plan.runs if r.stage == stage).config()
            stages.append(
                f"stage {stage} up to {cfg.epochs} epochs at lr {cfg.lr:g}, at most {cfg.lr_decays} lr decay(s)"
            )
        cfg = self.plan.runs[0].config()
        keys = (
            "width",
            "fc_width",
            "crop_size",
            "batch_size",
            "momentum",
            "weight_decay",
            "dropout",
            "init",
            "flip",
            "colour_shift",
            "normalize",
            "lr_patience",
            "lr_decays",
            "label_smoothing",
            "batch_norm",
        )
        differ = [
            f"{k} {getattr(cfg, k)!r} (paper {getattr(TrainConfig, k)!r})"
            for k in keys
            if getattr(cfg, k) != getattr(TrainConfig, k)
        ]
        text = "; ".join(stages) + " (the epochs are caps: the plateau schedule stops a run first)"
        return text + (
            f"; differs from the paper's recipe in: {', '.join(differ)}" if differ else "; otherwise the paper's recipe"
        )

    def _test_scales(self) -> dict[tuple[str, str], list[int]]:
        """The Q at which each table cell was evaluated densely (multi-crop cells have none)."""
        out: dict[tuple[str, str], list[int]] = {}
        for e in self.plan.evals:
            r = self.plan.run(e.runs[0])
            if e.kind == "scales":
                out[("3", f"{r.arch}@{r.label}")] = [e.single]
                out[("4", f"{r.arch}@{r.label}")] = e.multi
            else:
                for p in EVAL_PROTOCOLS:
                    qs = e.multi if "dense" in p else []
                    out[("6", p)] = qs
                    for name in e.runs:
                        out[("5", f"{self.plan.run(name).arch}@{p}")] = qs
        return out

    def affected(self, comp: Comparison) -> bool:
        """Whether a comparison rests on dense evaluation at a Q where the caveat applies (see ``caveats``)."""
        if not self.caveats():
            return False
        crop = self.plan.runs[0].config().crop_size
        qs = self._test_scales()
        return any(q > crop for cell in comp.treatment + comp.baseline for q in qs.get(cell, []))

    def caveats(self) -> list[str]:
        """Measurement limits worth knowing before reading the tables: none at the paper's scales, none from 64
        crops up (block 5's convs on maps of at least 4x4, overlapping dense windows: the small grid's design).

        Dense evaluation scores windows of the crop size at a stride of 32 pixels (five 2x2 pools). With 224 crops
        neighbouring windows share 86% of their pixels, with 64 crops 50%; with 32-pixel crops they share none,
        and block 5 works on 2x2 maps. (The pools round up, Caffe's ceil mode: the windows cover the image.)
        """
        crop = self.plan.runs[0].config().crop_size
        qs = sorted({q for e in self.plan.evals for q in [e.single, *e.multi] if q > crop})
        if not qs or crop >= 64:
            return []
        overlap = max(0.0, 1 - 32 / crop)
        text = (
            f"Dense evaluation scores windows of the {crop}-pixel crop at a stride of 32 pixels (five 2x2 pools). In "
            f"the paper a 224 window moves 32 pixels at a time and neighbouring windows share 86% of their pixels; "
            f"here they share {100 * overlap:.0f}%, and block 5 works on {crop // 16}x{crop // 16} maps (the paper: "
            f"14x14). So the comparisons marked † rest on evaluations at a geometry the paper did not have: the "
            f"one-scale rows of Table 3 for the large fixed and the jittered scales (Q above {crop}), multi-scale "
            "averages, and dense against multi-crop evaluation. Their verdicts measure this small-scale geometry as "
            "much as the paper's claims."
        )
        return [text]

    def convergence_note(self) -> str:
        """Per stage, how many runs were still improving at their last epoch by the plateau schedule's own rule
        (:func:`last_epoch_trend`; under the ``best`` rule a last epoch better by less than the threshold is
        counted apart): nets still improving when stopped are compared before they converged (the paper trains
        each to its plateau)."""
        parts, within = [], 0
        for stage in sorted({r.stage for r in self.plan.runs}):
            rows = [(read_epochs(r.folder), r.config()) for r in self.plan.runs if r.stage == stage]
            trends = [
                last_epoch_trend(
                    _at_last_lr(rs) if c.plateau == "trend" else [e["val_top1_err"] for e in rs],
                    c.lr_threshold,
                    c.plateau,
                    c.lr_window,
                )
                for rs, c in rows
                if len(rs) >= 2
            ]
            if trends:
                within += trends.count("within")
                parts.append(f"stage {stage}: {trends.count('improving')} of {len(trends)}")
        if parts and within:
            parts.append(
                f"runs whose last epoch was their best by no more than the threshold (not an improvement "
                f"to the schedule): {within}"
            )
        capped = [
            r.name
            for r in self.plan.runs
            if (m := self.outcome["markers"].get(r.name))
            and m.get("epochs") is not None
            and m["epochs"] >= r.config().epochs
        ]
        if parts:
            parts.append(
                f"runs that reached their epoch cap instead of a plateau: {len(capped)}"
                + (f" ({', '.join(capped)})" if capped else "")
            )
        return "; ".join(parts)

    def depth_note(self) -> str:
        """D vs E: the paper's saturation at 19 layers, shown without a verdict."""
        parts = []
        for label in ("256", "256-512"):
            d, e = self.cells["3"].get(f"D@{label}"), self.cells["3"].get(f"E@{label}")
            if d and e:
                seeds = sorted(set(d) & set(e))
                diffs = [e[s][0] - d[s][0] for s in seeds]
                parts.append(
                    f"E - D at {self.scale_text(label)}: {fmt(diffs, sign=True)} (paper "
                    f"{TABLE3[('E', label)][0] - TABLE3[('D', label)][0]:+.1f})"
                )
        return "; ".join(parts)


__all__ = ["ReportNotes", "last_epoch_trend"]
