"""`reproduce()`: a grid's plan executed into one folder, then its report (and Appendix A's tables for the small
grids); every call appended to OUT/history.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..localisation import reproduce_localisation
from ..runtime import is_main
from .budget import estimate_text, measure_rate
from .execute import execute
from .plan import Plan, make_plan
from .report import Report


def reproduce(
    grid: str = "small",
    out: str | os.PathLike | None = None,
    seeds: Sequence[int] | None = None,
    data: str | None = None,
    recipes: str | os.PathLike | None = None,
    device: str | None = None,
    jobs: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the paper's experiments on ``grid`` and write OUT/REPORT.md (returned), results.json and plots.

    Finished runs and their evaluations in ``out`` are reused; interrupted runs are resumed. Under torchrun,
    processes other than rank 0 return after training, with the output folder as their result.
    """
    plan = make_plan(grid, out, seeds, data, recipes, device, jobs)
    if not is_main():
        log = _quiet  # under torchrun, rank 0 speaks for all
    log(
        f"reproduce ({plan.grid}): {len(plan.runs)} runs, {len(plan.evals)} evaluations, {plan.jobs} job(s), "
        f"output in {plan.out}"
    )
    if plan.grid == "medium" and is_main():  # hours of GPU time: say so first
        log(plan.describe())
        log(estimate(plan))
    outcome = execute(plan, log)
    if not is_main():
        return plan.out
    command = command or typed_command() or shlex.join(sys.argv)
    outcome["history"] = _record_history(plan, outcome, command)
    report = Report(plan, outcome, command).write()
    reproduce_localisation(plan, report, log)  # Appendix A's tables, appended to REPORT.md (small and quick grids)
    log(f"done in {outcome['seconds'] / 60:.1f} min: {report}")
    return report


def _quiet(_: str) -> None:
    pass


def estimate(plan: Plan) -> str:
    """The plan's cost in GPU-hours (``budget``), at a step rate measured here when there is a GPU."""
    crop = plan.runs[0].config().crop_size
    return estimate_text(plan, measure_rate(crop, plan.device))


def _record_history(plan: Plan, outcome: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """Append this invocation to OUT/history.jsonl and return all of them: a report made by a second call that
    reused every run still says how long the calls that trained them took."""
    entry = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=command,
        wall_s=outcome["seconds"],
        trained=len(outcome["trained"]),
        reused=len(outcome["reused"]),
        jobs=plan.jobs,
        git=outcome.get("provenance", {}).get("git"),
    )
    path = plan.out / "history.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    history = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            history.append(json.loads(line))
    return history


def typed_command() -> str | None:
    """The command as typed (`vgg reproduce ...`, `python -m vggnet reproduce ...`), or None when this process
    was started otherwise."""
    name = Path(sys.argv[0]).name
    if "reproduce" in sys.argv[1:2]:
        if name == "vgg":
            return shlex.join(["vgg", *sys.argv[1:]])
        if name == "__main__.py":
            return shlex.join(["python", "-m", "vggnet", *sys.argv[1:]])
    return None


__all__ = ["estimate", "reproduce", "typed_command"]
