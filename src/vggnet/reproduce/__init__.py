"""`vgg reproduce`: the paper's experiments (Tables 3-6), run with ``train`` and measured with ``evaluate``.

A reproduction is a *plan* (training runs in the paper's stages, then evaluations) executed into one folder::

    OUT/
      runs/<name>-s<seed>/   one run folder per (net, training scale, seed), as `vgg train` makes it,
                             plus reproduce.json, the marker of a finished run
      logs/<name>.log        console output of the runs trained in worker processes
      eval/<name>.json       cached evaluations (reused while their runs are unchanged)
      history.jsonl          one line per call: date, command, wall time, runs trained and reused
      REPORT.md              our numbers beside the paper's, table by table, and the findings checked
      results.json           every number of the report, per seed and aggregated, with provenance
      plots/*.png            error against depth, error against test scale, learning curves of the stages
      localize/              small and quick grids: localisation runs from net D and Tables 8-9 (Appendix A),
                             appended to REPORT.md (vggnet.localisation.reproduce_localisation)

The rooms of the package, in the order a reproduction passes through them:

- ``published``: the paper's numbers (Tables 3-6) and its scales.
- ``grids``: the sizes of the staged plan (``--grid``), and ``budget``: what the medium grid will cost in
  GPU-hours before it runs.
- ``plan``: the runs in the paper's stages and the evaluations (``make_plan``); the test scales by
  ``vggnet.scales``, the rule `vgg eval` uses too.
- ``execute``: run folders (reuse, resume, a config that changed), the scheduler, the evaluation cache.
- ``findings``: the per-seed table cells and the paper's findings checked on them.
- ``report`` and ``figures``: REPORT.md, results.json and the plots.
- ``driver``: ``reproduce()``, all of the above in one call. (Its command line is ``vggnet.cli.reproduce``.)

Grids (``vggnet.reproduce.grids``):

- ``small`` (default): the embedded ``mnist-clutter`` digits, nets at 1/16 width, 64-pixel crops, every scale
  divided by 4 (S in {64, 96}, jittered [64, 128]), every run stopped by its plateau, 3 seeds; for 2 CPU cores
  (two runs at a time, one thread each; 48 minutes measured). ``grids.SMALL_DESIGN`` states the design
  that the report prints; docs/reproduce-design.md gives the reasons and pilots behind it.
- ``quick``: the same runs and evaluations with one seed, one or two epochs a stage, on 60
  training and 20 validation images a class: a plumbing check (every table filled), not a measurement.
- ``medium``: the paper's grid on a user's ImageNet-style subset (``--data DIR``) at 224 crops, for one GPU;
  before it starts it prints the runs and an estimate of GPU-hours (``budget``).
- ``paper``: the TOML recipes of ``recipes/imagenet`` (in file order) on ImageNet, one seed, on however many GPUs
  torchrun gives the command; evaluation on rank 0 after training.
"""

from __future__ import annotations

from .driver import estimate, reproduce, typed_command
from .execute import MARKER, check_config, eval_task, execute, make_subset, run_state, train_task
from .findings import Claim, Comparison, check, claims, collect, fmt, verdict
from .grids import GRIDS, SCALE_LABELS, SMALL_DESIGN, Grid, StageRun, staged_cells
from .plan import EvalSpec, Plan, RunSpec, check_data_folder, eval_scales_of, make_plan, paper_plan, small_plan
from .published import EVAL_PROTOCOLS, TABLE3, TABLE4, TABLE5, TABLE6, paper_scale_text, paper_value
from .report import Report

__all__ = [
    "EVAL_PROTOCOLS",
    "GRIDS",
    "MARKER",
    "SCALE_LABELS",
    "SMALL_DESIGN",
    "TABLE3",
    "TABLE4",
    "TABLE5",
    "TABLE6",
    "Claim",
    "Comparison",
    "EvalSpec",
    "Grid",
    "Plan",
    "Report",
    "RunSpec",
    "StageRun",
    "check",
    "check_config",
    "check_data_folder",
    "claims",
    "collect",
    "estimate",
    "eval_scales_of",
    "eval_task",
    "execute",
    "fmt",
    "make_plan",
    "make_subset",
    "paper_plan",
    "paper_scale_text",
    "paper_value",
    "reproduce",
    "run_state",
    "small_plan",
    "staged_cells",
    "train_task",
    "typed_command",
    "verdict",
]
