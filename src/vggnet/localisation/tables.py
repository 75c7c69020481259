"""The paper's Tables 8 and 9 (localisation), and the laptop-scale version of them inside `vgg reproduce`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import boxes as B
from .. import runs
from ..data import EMBEDDED
from ..report import markdown_table, write_report
from .nets import FINETUNE, LOC_FILE, REGRESSIONS, LocConfig
from .protocols import LocResult, evaluate_localisation
from .training import train_localisation


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _scales(r: LocResult) -> str:
    return ",".join(map(str, r.scales))


def markdown_tables(results: list[LocResult]) -> str:
    """The paper's Table 8 (centre crop, true class: SCR vs PCR, all layers vs FC only) and Table 9 (dense vs
    centre, test scales) of these results."""
    lines = []
    center = [r for r in results if r.protocol == "center"]
    if center:
        rows = [
            (
                r.regression.upper(),
                "all layers" if r.finetune == "all" else "1st and 2nd FC",
                _scales(r),
                _pct(r.top5_loc_err),
                Path(r.run).name,
            )
            for r in center
        ]
        lines += [
            "## Table 8 (localisation): regression and fine-tuning, one centre crop with the true class",
            "",
            markdown_table(["regression", "fine-tuned layers", "Q", "loc. error %", "run"], rows, "lllrl"),
            "",
        ]
    if results:
        rows = [
            (
                r.regression.upper(),
                r.finetune,
                "dense (whole image, merged)" if r.protocol == "dense" else "centre crop, true class",
                _scales(r),
                _pct(r.top1_loc_err),
                _pct(r.top5_loc_err),
                _pct(r.top1_cls_err),
                r.images,
            )
            for r in results
        ]
        lines += [
            "## Table 9 (localisation): test protocols, top-1 / top-5 localisation error",
            "",
            markdown_table(
                [
                    "regression",
                    "fine-tuned",
                    "protocol",
                    "Q",
                    "top-1 loc. err %",
                    "top-5 loc. err %",
                    "top-1 class err %",
                    "images",
                ],
                rows,
                "llllrrrr",
            ),
            "",
            "A prediction is right when its class is the image's and its box overlaps a true box with "
            "IoU > 0.5; the centre crop uses the true class, so its top-1 and top-5 errors are equal. The "
            "class error is the classification net's own (dense, averaged over locations and scales), a "
            "floor under the top-1 localisation error.",
            "",
        ]
    return "\n".join(lines)


# ---- laptop-scale tables for `vgg reproduce` --------------------------------------------------------------------

# (epochs, training images per class, validation images per class) of the localisation nets of each grid
_REPRODUCE = {"quick": (1, 20, 5), "small": (4, 200, 50)}


def _quiet(_: str) -> None:
    pass


def _train_and_test(
    source: Path, folders: list[Path], data: str, device: str, settings: tuple[int, int, int]
) -> list[LocResult]:
    """Train the four nets that are not done yet, test each on a centre crop, and the PCR net on all layers
    densely at one and at three scales."""
    epochs, per_class, val_per_class = settings
    results = []
    for folder in folders:
        regression, finetune = folder.name.split("-")
        if not (folder / "done.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            train_localisation(
                LocConfig(
                    from_run=str(source),
                    regression=regression,
                    finetune=finetune,
                    data=data,
                    epochs=epochs,
                    max_per_class=per_class,
                    val_per_class=val_per_class,
                    device=device,
                    out=str(folder),
                    batch_size=32,
                ),
                log_fn=_quiet,
            )
            (folder / "done.json").write_text("{}\n")
        results.append(evaluate_localisation(folder, "center", data=data, max_per_class=val_per_class, device=device))
    best = folders[0].parent / "pcr-all"
    s = int(json.loads((best / LOC_FILE).read_text())["scale"])
    for scales in ([s], [s, s + s // 2, 2 * s]):
        results.append(
            evaluate_localisation(best, "dense", scales=scales, data=data, max_per_class=val_per_class, device=device)
        )
    return results


def reproduce_localisation(plan: Any, report: Path, log: Callable[[str], None] = print) -> str | None:
    """Localisation at laptop scale inside `vgg reproduce`: four nets (SCR / PCR, all layers / FC only) from the
    plan's net D at the small fixed scale, tested on a centre crop and densely; the tables go into OUT/localize/
    and are appended to REPORT.md. Returns the Markdown, or None when the plan has no such run or no boxes."""
    settings = _REPRODUCE.get(plan.grid)
    source = next((r for r in plan.runs if r.arch == "D" and r.label == "256"), None)
    if settings is None or source is None or not (source.folder / runs.MODEL_FILE).exists():
        return None
    data = str(plan.subset[0] if plan.subset else source.config().data)  # the full data set, not the quick subset
    if data not in EMBEDDED and not (Path(data) / B.BOXES_FILE).is_file():
        log(f"localisation tables skipped: {data} has no {B.BOXES_FILE}")
        return None
    epochs, per_class, val_per_class = settings
    out = plan.out / "localize"
    folders = [out / f"{regression}-{finetune}" for regression in REGRESSIONS for finetune in FINETUNE]
    threads = torch.get_num_threads()
    if plan.device == "cpu":
        torch.set_num_threads(1)  # small nets: one thread, as the plan's jobs (threads spinning on 2 shared cores)
    try:
        cached = out / "localize.json"
        if cached.is_file() and all((f / "done.json").is_file() for f in folders):  # nothing retrained: reuse
            saved = json.loads(cached.read_text())
            results, seconds = [LocResult(**r) for r in saved["results"]], saved["seconds"]
        else:
            t0 = time.perf_counter()
            results = _train_and_test(source.folder, folders, data, plan.device, settings)
            seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    s = results[0].scales[0]
    text = markdown_tables(results)
    intro = (
        f"Localisation (Appendix A) at laptop scale: net D of `{source.name}` (S = {s}) turned into box "
        f"regressors, {epochs} epoch(s) at lr 1e-3 on {per_class} images a class of {data}, tested on "
        f"{val_per_class} validation images a class; {seconds:.0f} s in all (training and evaluation)."
    )
    write_report(
        out, "localize", intro + "\n\n" + text, {"results": [r.to_dict() for r in results], "seconds": seconds}
    )
    with open(report, "a") as f:
        f.write("\n" + intro + "\n\n" + text)
    log(f"localisation tables: {out / 'localize.md'}")
    return text


__all__ = ["markdown_tables", "reproduce_localisation"]
