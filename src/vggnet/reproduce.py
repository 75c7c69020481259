"""`vgg reproduce`: the paper's experiments (Tables 3-6), run with ``train`` and measured with ``evaluate``.

A reproduction is a *plan* (training runs in the paper's stages, then evaluations) executed into one folder::

    OUT/
      runs/<name>-s<seed>/   one run folder per (net, training scale, seed), as `vgg train` makes it,
                             plus reproduce.json, the marker of a finished run
      logs/<name>.log        console output of the runs trained in worker processes
      eval/<name>.json       cached evaluation results (reused while their runs are unchanged)
      history.jsonl          one line per call: date, command, wall time, runs trained and reused
      REPORT.md              our numbers beside the paper's, table by table, and the findings checked
      results.json           every number of the report, per seed and aggregated, with provenance
      plots/*.png            error against depth, error against test scale, learning curves of the stages
      localize/              small and quick grids: localisation runs from net D and Tables 8-9 (Appendix A),
                             appended to REPORT.md (vggnet.localize.reproduce_localisation)

The paper's staged initialisation (section 3.1) is the plan's dependency graph: net A (and A-LRN) from random
weights; B..E and B-5x5 (section 4.1) at the small fixed scale from the A run (train() copies A's first four
convs and three FC layers when the source is net A; B-5x5, whose convs are 5x5, takes the FC layers only); the
large fixed scale from the small one with lr / 10; the jittered nets fine-tuned from the large-scale ones.
Grids (``vggnet.grids``):

- ``small`` (default): the embedded ``mnist-clutter`` digits, nets at 1/16 width, 64-pixel crops, every scale
  divided by 4 (S in {64, 96}, jittered [64, 128]), every run stopped by its plateau, 3 seeds; for 2 CPU cores
  (two runs at a time, one thread each; about 1.5 hours by a pilot's estimate). ``grids.SMALL_DESIGN`` gives
  the design and its reasons.
- ``quick``: the same runs and evaluations with one seed, one or two epochs a stage, on 60
  training and 20 validation images a class: a plumbing check (every table filled), not a measurement.
- ``medium``: the paper's grid on a user's ImageNet-style subset (``--data DIR``) at 224 crops, for one GPU;
  before it starts it prints the runs and an estimate of GPU-hours (``vggnet.budget``).
- ``paper``: the TOML recipes of ``recipes/imagenet`` (in file order) on ImageNet, one seed, on however many GPUs
  torchrun gives the command; evaluation on rank 0 after training.

Runs that finished are reused when the command runs again, an interrupted run is resumed from its newest
checkpoint (``train(..., resume=...)``), and a run folder made with a different config stops the command with
a message instead of being mixed into the tables.

Findings are checked on the top-1 error, paired by seed (all runs of one seed share a data order and a staged
initialisation): a claim is *supported* when the mean per-seed difference goes the paper's way by more than one
standard deviation of the per-seed differences, *not supported* when it goes the other way by more than that,
and *inconclusive* otherwise (or with a single seed, which has no spread).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import runs as runs_mod
from .configs import weight_layers
from .grids import GRIDS, SCALE_LABELS, SMALL_DESIGN, Grid, StageRun, staged_cells  # noqa: F401 (re-exported)
from .runtime import is_main, rank, setup_distributed, world_size
from .scales import eval_scales, scale_step

# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers (PAPER.md section 5; ILSVRC-2012 validation, top-1 / top-5 error %)

PAPER_SCALES: dict[str, tuple[int, int]] = {"256": (256, 256), "384": (384, 384), "256-512": (256, 512)}
# Test scales of the paper's tables: one scale (Table 3), three scales (Tables 4-6).
PAPER_Q_SINGLE = {"256": "256", "384": "384", "256-512": "384"}
PAPER_Q_MULTI = {"256": "224,256,288", "384": "352,384,416", "256-512": "256,384,512"}

TABLE3: dict[tuple[str, str], tuple[float, float]] = {
    ("A", "256"): (29.6, 10.4), ("A-LRN", "256"): (29.7, 10.5), ("B", "256"): (28.7, 9.9),
    ("C", "256"): (28.1, 9.4), ("C", "384"): (28.1, 9.3), ("C", "256-512"): (27.3, 8.8),
    ("D", "256"): (27.0, 8.8), ("D", "384"): (26.8, 8.7), ("D", "256-512"): (25.6, 8.1),
    ("E", "256"): (27.3, 9.0), ("E", "384"): (26.9, 8.7), ("E", "256-512"): (25.5, 8.0),
}  # fmt: skip
TABLE4: dict[tuple[str, str], tuple[float, float]] = {
    ("B", "256"): (28.2, 9.6),
    ("C", "256"): (27.7, 9.2), ("C", "384"): (27.8, 9.2), ("C", "256-512"): (26.3, 8.2),
    ("D", "256"): (26.6, 8.6), ("D", "384"): (26.5, 8.6), ("D", "256-512"): (24.8, 7.5),
    ("E", "256"): (26.9, 8.7), ("E", "384"): (26.7, 8.6), ("E", "256-512"): (24.8, 7.5),
}  # fmt: skip
EVAL_PROTOCOLS = ("dense", "multicrop", "dense+multicrop")
TABLE5: dict[tuple[str, str], tuple[float, float]] = {
    ("D", "dense"): (24.8, 7.5), ("D", "multicrop"): (24.6, 7.5), ("D", "dense+multicrop"): (24.4, 7.2),
    ("E", "dense"): (24.8, 7.5), ("E", "multicrop"): (24.6, 7.4), ("E", "dense+multicrop"): (24.4, 7.1),
}  # fmt: skip
TABLE6: dict[str, tuple[float, float]] = {
    "dense": (24.0, 7.1), "multicrop": (23.9, 7.2), "dense+multicrop": (23.7, 6.8),
}  # fmt: skip
TABLE6_SUBMISSION = (24.7, 7.5)  # the 7-net ILSVRC submission, not reproduced (it mixes nets of other recipes)

# ---------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class RunSpec:
    """One training run of the plan."""

    name: str  # the run folder's name under OUT/runs
    arch: str
    label: str  # the paper's training scale this run stands for ("256", "384", "256-512")
    scale: tuple[int, int]  # our (Smin, Smax)
    seed: int
    stage: int  # 1: random init; 2: from net A; 3: from the small fixed scale; 4: jittered, fine-tuned
    depends: str | None  # the run it is initialised from (a name in the plan)
    overrides: dict[str, Any]  # TrainConfig fields over the recipe (or the data set's preset)
    recipe: str | None = None  # a TOML recipe (paper grid)

    @property
    def folder(self) -> Path:
        return Path(self.overrides["out"])

    def config(self):
        """The resolved TrainConfig: paper defaults < data preset < recipe < overrides."""
        from .config import resolve

        return resolve(self.overrides, recipe=self.recipe)

    def command(self, launcher: str = "vgg") -> str:
        """The `vgg train` command line that makes this run on its own."""
        from .config import TrainConfig

        defaults = {f: getattr(TrainConfig, f) for f in TrainConfig.__dataclass_fields__}
        args = [*shlex.split(launcher), "train"]
        if self.recipe:
            args += ["--recipe", _shown(self.recipe)]
        values = dict(self.overrides)
        if "scale_min" in values:  # --scale S or --scale Smin,Smax, as people write it
            lo, hi = values.pop("scale_min"), values.pop("scale_max", values.get("scale_min"))
            values = {"arch": values.pop("arch", None), "scale": f"{lo}" if lo == hi else f"{lo},{hi}", **values}
        first = ("arch", "scale", "data", "init_from", "epochs", "lr", "seed")  # what differs between runs first
        for key in sorted(values, key=lambda k: (k not in first, first.index(k) if k in first else 0, k == "out")):
            value = values[key]
            flag = "--" + key.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            elif not self.recipe and key in defaults and value == defaults[key] and key not in ("arch", "data", "out"):
                continue  # the paper's default: no need to say it
            else:
                args += [flag, _shown(value) if key in ("out", "init_from", "data") else str(value)]
        return shlex.join(args)


@dataclass
class EvalSpec:
    """One evaluation of the plan: a run at its test scales (Tables 3-4), or D and E jittered (Tables 5-6)."""

    name: str
    kind: str  # "scales": dense at each Q on its own and multi-scale; "protocols": dense / multi-crop / both, fused
    runs: list[str]
    seed: int
    single: int  # the single test scale of Table 3: S, or (Smin + Smax) / 2
    multi: list[int]  # the test scales of Tables 4-6 (just [single] for A and A-LRN, which Table 4 leaves out)

    def commands(self, plan: Plan) -> list[str]:
        """The `vgg eval` / `vgg fuse` command lines that compute the same numbers (without the result cache)."""
        folders = [_shown(plan.run(n).folder) for n in self.runs]
        flip = [] if plan.flip else ["--no-flip"]
        common = [*flip, "--device", plan.device, "--no-save"]
        multi = ",".join(map(str, self.multi))
        if self.kind == "protocols":
            return [shlex.join(["vgg", "fuse", *folders, "--protocol", ",".join(EVAL_PROTOCOLS), "--scales", multi,
                                *common])]  # fmt: skip
        qs = sorted(set(self.multi) | {self.single})
        cmds = [shlex.join(["vgg", "eval", *folders, "--protocol", "dense", "--scales", str(q), *common]) for q in qs]
        if len(self.multi) > 1:
            cmds.append(shlex.join(["vgg", "eval", *folders, "--protocol", "dense", "--scales", multi, *common]))
        return cmds


@dataclass
class Plan:
    """Training runs in dependency order, the evaluations, and how to execute them."""

    grid: str
    description: str
    out: Path
    runs: list[RunSpec]
    evals: list[EvalSpec]
    seeds: list[int]
    jobs: int
    device: str
    flip: bool  # test-time flips (off for digits)
    subset: tuple[str, str, tuple[int, int]] | None = None  # (source data, folder, (train, val) a class) to make
    launcher: str = "vgg"  # how the per-run commands of the dry run are launched
    _by_name: dict[str, RunSpec] = field(default_factory=dict, repr=False)

    def run(self, name: str) -> RunSpec:
        if not self._by_name:
            self._by_name = {r.name: r for r in self.runs}
        return self._by_name[name]

    def describe(self) -> str:
        """The plan as text: the runs stage by stage with their commands, then the evaluations."""
        titles = {
            1: "from random initialisation",
            2: "deeper nets: first four convs and three FC layers from net A (section 3.1)",
            3: "the large fixed scale, initialised from the small one with lr / 10",
            4: "scale jittering, fine-tuned (all layers) from the large fixed scale",
        }
        lines = [
            f"Plan ({self.grid}): {self.description}",
            f"seeds {', '.join(map(str, self.seeds))}; {len(self.runs)} training runs in "
            f"{len({r.stage for r in self.runs})} stages, {len(self.evals)} evaluations; output in {_shown(self.out)}; "
            f"{self.jobs} job(s) at a time on {self.device}",
        ]
        if self.subset:
            src, folder, (n, m) = self.subset
            lines.append(f"data: {_shown(folder)}, made from {src} when the plan runs (the first {n} training and "
                         f"{m} validation images of each class)")  # fmt: skip
        if self.launcher != "vgg":
            lines.append(f"launch: {self.launcher.replace(' -m vggnet', '')} -m vggnet reproduce ... runs the "
                         f"stages in order on every process; evaluation runs on rank 0 afterwards")  # fmt: skip
        for stage in sorted({r.stage for r in self.runs}):
            lines += ["", f"Stage {stage}: {titles.get(stage, '')}"]
            for r in (r for r in self.runs if r.stage == stage):
                cfg = r.config()
                s = f"S={r.scale[0]}" if r.scale[0] == r.scale[1] else f"S in [{r.scale[0]}, {r.scale[1]}]"
                src = f", init from {r.depends}" if r.depends else ""
                small = r.label in PAPER_SCALES and r.scale != PAPER_SCALES[r.label]
                paper = f" (paper {paper_scale_text(r.label)})" if small else ""
                lines.append(f"  {r.name}: {r.arch}, {s}{paper}, up to {cfg.epochs} epochs, "
                             f"lr {cfg.lr:g}{src}")  # fmt: skip
                lines.append(f"    {r.command(self.launcher)}")
        lines += ["", "Evaluations (dense at each test scale and multi-scale; D and E jittered: dense, multi-crop, "
                      "both, and their fusion):"]  # fmt: skip
        for e in self.evals:
            lines.append(f"  {e.name}")
            lines += [f"    {c}" for c in e.commands(self)]
        return "\n".join(lines)


def _shown(path: Any) -> str:
    """A path as the plan prints it: relative to the current directory when it lies below it."""
    p = Path(str(path))
    with contextlib.suppress(ValueError):
        return str(p.relative_to(Path.cwd())) if p.is_absolute() else str(p)
    return str(p)


def paper_scale_text(label: str) -> str:
    """The paper's name of a training scale: "S=256" or "S=[256,512]"."""
    lo, hi = PAPER_SCALES[label]
    return f"S={lo}" if lo == hi else f"S=[{lo},{hi}]"


def _scale_name(arch: str, scale: tuple[int, int]) -> str:
    s = f"S{scale[0]}" if scale[0] == scale[1] else f"S{scale[0]}-{scale[1]}"
    return f"{arch}-{s}"


def small_plan(grid: Grid, out: Path, seeds: Sequence[int] | None = None, data: str | None = None,
               device: str = "cpu", jobs: int | None = None) -> Plan:  # fmt: skip
    """The staged plan of a small grid: every cell of ``grid`` for every seed."""
    seeds = list(seeds if seeds is not None else grid.seeds)
    base = dict(grid.base)
    subset = None
    if grid.needs_data and not data:
        raise ValueError(f"--scale {grid.name} needs --data DIR: an ImageNet-style folder with train/ and val/ class "
                         f"folders (for example Imagenette or ImageNet-100)")  # fmt: skip
    if data:
        base["data"] = data
    if grid.subset:
        # a smaller copy of the data, made when the plan runs (see _prepare_data)
        source = base["data"]
        name = f"{Path(source).name}-{grid.subset[0]}-{grid.subset[1]}"
        subset = (source, str(out / "data" / name), grid.subset)
        base["data"] = subset[1]
    specs: list[RunSpec] = []
    for seed in seeds:
        names = {}
        for cell in grid.cells:
            scale = grid.scales[cell.label]
            name = f"{_scale_name(cell.arch, scale)}-s{seed}"
            names[(cell.arch, cell.label)] = name
            depends = names[cell.source] if cell.source else None
            overrides = dict(base, **dict(cell.settings), arch=cell.arch, scale_min=scale[0], scale_max=scale[1],
                             epochs=cell.epochs, lr=cell.lr, seed=seed, device=device,
                             out=str(out / "runs" / name))  # fmt: skip
            if depends:
                overrides["init_from"] = str(out / "runs" / depends)
            stage = 1 if not cell.source else 1 + next(s.stage for s in specs if s.name == depends)
            specs.append(RunSpec(name, cell.arch, cell.label, scale, seed, stage, depends, overrides))
    specs.sort(key=lambda r: (r.stage, r.seed))  # stage by stage: the order of the paper (and of the dry run)
    jobs = jobs or default_jobs(device)
    return Plan(grid.name, grid.description, out, specs, _evals(specs, seeds), seeds, jobs, device,
                flip=bool(grid.base.get("flip", True)), subset=subset)  # fmt: skip


def default_recipes() -> Path:
    """recipes/imagenet of the repository this package runs from (or of the current directory)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "recipes" / "imagenet").is_dir():
            return root / "recipes" / "imagenet"
    raise FileNotFoundError("cannot find recipes/imagenet next to the package or in the current directory; "
                            "pass --recipes DIR (the repository's recipes/imagenet)")  # fmt: skip


def paper_plan(out: Path, recipes: str | os.PathLike | None = None, data: str | None = None,
               seeds: Sequence[int] | None = None, device: str = "auto") -> Plan:  # fmt: skip
    """The paper's ImageNet plan: one run per recipe in ``recipes`` (TOML files in name order), per seed.

    A recipe's ``init_from`` that names another recipe's ``out`` becomes a dependency on that run of the same
    seed (and its folder under OUT/runs); ``out``, ``seed`` and (when given) ``data`` are replaced.
    """
    from .config import read_recipe, resolve
    from .configs import parse_name

    folder = Path(recipes) if recipes else default_recipes()
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.toml recipes")
    seeds = list(seeds if seeds is not None else (0,))
    raw = {f: read_recipe(f) for f in files}
    by_out = {str(Path(r["out"])): f.stem for f, r in raw.items() if r.get("out")}
    specs: list[RunSpec] = []
    for seed in seeds:
        for f, r in raw.items():
            name = f"{f.stem}-s{seed}"
            overrides: dict[str, Any] = dict(out=str(out / "runs" / name), seed=seed)
            if data:
                overrides["data"] = data
            if device != "auto":
                overrides["device"] = device
            depends = None
            src = r.get("init_from")
            if src and str(Path(src)) in by_out:
                depends = f"{by_out[str(Path(src))]}-s{seed}"
                overrides["init_from"] = str(out / "runs" / depends)
            cfg = resolve(overrides, recipe=f)
            cfg_scale = (cfg.scale_min, cfg.scale_max)
            label = f"{cfg_scale[0]}" if cfg_scale[0] == cfg_scale[1] else f"{cfg_scale[0]}-{cfg_scale[1]}"
            arch = parse_name(cfg.arch)[0]
            stage = 1
            if depends:
                try:
                    stage = 1 + next(s.stage for s in specs if s.name == depends)
                except StopIteration:
                    raise ValueError(f"recipe {f.name} starts from {src}, whose recipe comes later in name "
                                     f"order; rename the files so that sources come first") from None  # fmt: skip
            specs.append(RunSpec(name, arch, label, cfg_scale, seed, stage, depends, overrides, recipe=str(f)))
    specs.sort(key=lambda s: (s.stage, s.seed))
    launcher = "torchrun --nproc-per-node=NGPUS -m vggnet" if world_size() <= 1 else "vgg"
    return Plan("paper", f"the paper's ImageNet recipes from {folder}", out, specs, _evals(specs, seeds), seeds,
                jobs=1, device=device, flip=True, launcher=launcher)  # fmt: skip


def scales_for(scale: tuple[int, int], crop: int) -> tuple[int, list[int]]:
    """(single, multi): the test scales Q of a net trained at ``scale`` = (Smin, Smax), by the one rule of
    ``vggnet.scales`` that `vgg eval` uses too: S or (Smin + Smax) / 2; {S - step, S, S + step} (step: 32 at 224
    crops, proportional to the crop) or {Smin, (Smin + Smax) / 2, Smax}; every Q at least the crop size."""
    lo, hi = scale
    return eval_scales(lo, hi, crop, multi=False)[0], eval_scales(lo, hi, crop)


def _evals(specs: Sequence[RunSpec], seeds: Sequence[int]) -> list[EvalSpec]:
    """Every run at its test scales; per seed, D and E jittered with every protocol and fused."""
    out = []
    for s in specs:
        single, multi = scales_for(s.scale, s.config().crop_size)
        if (s.arch, s.label) not in TABLE4:
            multi = [single]  # A and A-LRN appear in Table 3 only: one test scale
        out.append(EvalSpec(s.name, "scales", [s.name], s.seed, single, multi))
    for seed in seeds:
        pair = [next((s for s in specs if s.seed == seed and s.label == "256-512" and s.arch == a), None) for a in "DE"]
        if all(pair):
            single, multi = scales_for(pair[0].scale, pair[0].config().crop_size)
            out.append(EvalSpec(f"D+E-jittered-s{seed}", "protocols", [p.name for p in pair], seed, single, multi))
    return out


def default_jobs(device: str) -> int:
    """Runs at a time: one per CPU core on the CPU (each with one thread), one on a GPU."""
    if device.startswith("cuda") or (device == "auto" and _cuda()):
        return 1
    return max(1, os.cpu_count() or 1)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------------
# Run folders: finished, interrupted, or made differently

MARKER = "reproduce.json"
# Fields that may differ between the plan and a finished run without changing its numbers: where it ran
# and how it logged, and paths (a moved output folder keeps its runs).
_NEUTRAL = {"device", "workers", "out", "init_from", "log_every", "tensorboard", "checkpoint_every", "keep_checkpoints",
            "amp", "compile", "channels_last", "fused", "deterministic"}  # fmt: skip


def run_state(spec: RunSpec) -> str:
    """"done" (finished: final weights and the marker), "resume" (a checkpoint to continue) or "new"."""
    folder = spec.folder
    if (folder / MARKER).is_file() and runs_mod.is_run(folder):
        return "done"
    if any((folder / "checkpoints").glob("ckpt-*.pt")):
        return "resume"
    return "new"


def check_config(spec: RunSpec) -> None:
    """Stop when an existing run folder was made with another config than the plan's (say which fields)."""
    import tomllib

    path = spec.folder / runs_mod.CONFIG_FILE
    if not path.is_file():
        return
    with open(path, "rb") as f:
        saved = tomllib.load(f)
    want = spec.config().to_dict()
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} in the plan" for k, v in want.items()
            if k not in _NEUTRAL and k in saved and saved[k] != v]  # fmt: skip
    if diff:
        raise ValueError(
            f"{spec.folder} holds a run made with another config ({'; '.join(diff[:4])}); remove that folder or "
            f"pass another --out"
        )


def _marker(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MARKER).read_text())


def _epochs_done(folder: Path) -> list[dict[str, Any]]:
    from .plots import read_metrics

    return [r for r in read_metrics(folder) if r.get("kind") == "epoch"]


# ---------------------------------------------------------------------------------------------------------------
# Tasks: what a worker process (or the main process) executes


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _output_to(log: Path | None):
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def train_task(spec: RunSpec, log: str | None = None) -> dict[str, Any]:
    """Train (or resume) one run of the plan and write its marker; returns the marker."""
    from .train import train

    folder = spec.folder
    state = run_state(spec)
    t0 = time.perf_counter()
    with _output_to(Path(log) if log else None):
        if state == "resume":
            # flags that only say where to run may change on resume; the rest comes from the checkpoint
            train({k: spec.overrides[k] for k in ("device", "workers") if k in spec.overrides}, resume=folder)
        else:  # new, or started but stopped before its first checkpoint: train() starts it again from step 0
            train(spec.config())
    seconds = time.perf_counter() - t0
    if not is_main():
        return {}
    epochs = _epochs_done(folder)
    marker = dict(name=spec.name, seconds=round(seconds, 1), resumed=state == "resume", epochs=len(epochs),
                  val_top1_err=epochs[-1]["val_top1_err"] if epochs else None,
                  finished=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
    from .weights import atomic_write

    atomic_write(folder / MARKER, lambda tmp: Path(tmp).write_text(json.dumps(marker, indent=1) + "\n"))
    return marker


def eval_task(spec: EvalSpec, folders: list[str], device: str) -> dict[str, Any]:
    """Evaluate one EvalSpec; errors in percent.

    ``scales``: dense evaluation at each test scale on its own (Table 3 takes the single test scale, the plot of
    error against Q all of them) and at the multi-scale set (Table 4). ``protocols``: the two jittered nets with
    dense, multi-crop and both at the multi-scale set, each and fused (Tables 5 and 6).
    """
    from .evaluation import evaluate, resolve_eval_samples
    from .runs import load_run

    loaded = [load_run(f) for f in folders]
    flip = all(bool(r.config.get("flip", True)) for r in loaded)  # a net never shown mirror images is not asked
    samples = resolve_eval_samples(loaded[0])
    t0 = time.perf_counter()

    def pct(r) -> list[float]:
        return [100 * r.top1_err, 100 * r.top5_err]

    if spec.kind == "protocols":
        res = evaluate(loaded, samples, protocols=list(EVAL_PROTOCOLS), scales=spec.multi, flip=flip, device=device)
        rows = {name: {p: pct(res.get(p, name)) for p in EVAL_PROTOCOLS} for name in [*res.nets, "fused"]}
        # the rows by run name (evaluate names nets after their folders)
        named = dict(zip([*spec.runs, "fused"], [rows[n] for n in [*res.nets, "fused"]]))
        scales = {spec.runs[i]: res.get("dense", n).scales for i, n in enumerate(res.nets)}
        return dict(kind=spec.kind, runs=spec.runs, rows=named, scales=scales, n=res.n, k=res.k, flip=flip,
                    classes=res.num_classes,
                    seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    run = loaded[0]
    per_q = {}
    for q in sorted(set(spec.multi) | {spec.single}):
        res = evaluate(run, samples, protocols="dense", scales=[q], flip=flip, device=device)
        per_q[str(q)] = pct(res.get("dense"))
    if len(spec.multi) > 1:
        multi_err = pct(evaluate(run, samples, protocols="dense", scales=spec.multi, flip=flip,
                                 device=device).get("dense"))  # fmt: skip
    else:
        multi_err = per_q[str(spec.multi[0])]
    return dict(kind=spec.kind, runs=spec.runs, single_q=spec.single, multi_qs=spec.multi, per_q=per_q,
                multi=multi_err, n=res.n, k=res.k, classes=res.num_classes, flip=flip,
                seconds=round(time.perf_counter() - t0, 1))  # fmt: skip


def _eval_cache_key(plan: Plan, spec: EvalSpec) -> dict[str, Any]:
    """What a cached evaluation depends on: its runs' finish stamps and the evaluation settings."""
    return dict(sources={n: _marker(plan.run(n).folder).get("finished") for n in spec.runs}, kind=spec.kind,
                single=spec.single, multi=spec.multi)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Executing a plan


@dataclass
class Task:
    name: str
    kind: str  # "train" or "eval"
    deps: list[str]
    spec: RunSpec | EvalSpec
    priority: int = 0  # more dependants first: the long chains of the staged plan start early


def _tasks(plan: Plan) -> list[Task]:
    tasks = [Task(r.name, "train", [r.depends] if r.depends else [], r) for r in plan.runs]
    tasks += [Task("eval:" + e.name, "eval", list(e.runs), e) for e in plan.evals]
    children: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for d in t.deps:
            children[d].append(t.name)

    def descendants(name: str) -> int:
        return sum(1 + descendants(c) for c in children[name])

    for t in tasks:
        t.priority = descendants(t.name)
    return tasks


def execute(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every run that is not finished and evaluate every run whose cached result is stale.

    Returns {"markers": {run: marker}, "evals": {eval name: result}, "trained": [...], "reused": [...],
    "seconds": wall time}. With ``plan.jobs`` > 1, runs go to worker processes (spawned, one thread each) as
    soon as the run they start from is finished. Under torchrun (WORLD_SIZE > 1) every process trains the runs
    in plan order (DDP inside train()), then rank 0 alone evaluates.
    """
    t_start = time.perf_counter()
    provenance = provenance_info(plan.device)  # at the start: the code and machine that run the plan
    plan.out.mkdir(parents=True, exist_ok=True)
    world = world_size()
    for r in plan.runs:
        check_config(r)
    _prepare_data(plan)
    tasks = _tasks(plan)
    done: dict[str, Any] = {}
    markers: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    trained: list[str] = []
    reused: list[str] = []
    # finished runs and fresh cached evaluations are done before anything starts
    for t in tasks:
        if t.kind == "train" and run_state(t.spec) == "done":
            markers[t.name] = _marker(t.spec.folder)
            reused.append(t.name)
            done[t.name] = True
    for t in tasks:
        if t.kind == "eval" and all(d in done for d in t.deps):
            cached = _cached_eval(plan, t.spec)
            if cached is not None:
                evals[t.spec.name] = cached
                done[t.name] = True
    if reused:
        log(f"reusing {len(reused)} finished run(s) in {plan.out / 'runs'}")

    def finish(t: Task, result: dict[str, Any], seconds: float) -> None:
        done[t.name] = True
        if t.kind == "train":
            markers[t.name] = result
            trained.append(t.name)
            err = result.get("val_top1_err")
            log(f"[{_clock(t_start)}] trained {t.name}: {result.get('epochs')} epochs in {seconds:.0f}s"
                + (f", val top-1 err {100 * err:.2f}% (one centre crop)" if err is not None else ""))
        else:
            evals[t.spec.name] = result
            _save_eval(plan, t.spec, result)
            log(f"[{_clock(t_start)}] evaluated {t.spec.name} in {seconds:.0f}s")

    pending = [t for t in tasks if t.name not in done]
    if world > 1:
        _execute_distributed(plan, pending, finish, log, rank(), t_start)
    elif plan.jobs <= 1:
        for t in pending:  # plan order is dependency order
            log(f"[{_clock(t_start)}] {'training' if t.kind == 'train' else 'evaluating'} {t.spec.name}")
            t0 = time.perf_counter()
            finish(t, _run_task(t, plan, None), time.perf_counter() - t0)
    else:
        _execute_pool(plan, pending, done, finish, log, t_start)
    return dict(markers=markers, evals=evals, trained=trained, reused=reused, provenance=provenance,
                seconds=round(time.perf_counter() - t_start, 1))  # fmt: skip


def _clock(t0: float) -> str:
    s = int(time.perf_counter() - t0)
    return f"{s // 60:02d}:{s % 60:02d}"


def _run_task(t: Task, plan: Plan, log_file: str | None) -> dict[str, Any]:
    if t.kind == "train":
        return train_task(t.spec, log_file)
    folders = [str(plan.run(n).folder) for n in t.spec.runs]
    return eval_task(t.spec, folders, plan.device)


def _timed(t: Task, plan: Plan, log_file: str | None) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    result = _run_task(t, plan, log_file)
    return result, time.perf_counter() - t0


def _execute_pool(plan: Plan, pending: list[Task], done: dict[str, Any], finish, log, t_start: float) -> None:
    """A small scheduler: up to ``plan.jobs`` tasks at a time, each as soon as its dependencies are done."""
    threads = max(1, (os.cpu_count() or 1) // plan.jobs)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    waiting = sorted(pending, key=lambda t: -t.priority)
    running: dict[futures.Future, Task] = {}
    with futures.ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        try:
            while waiting or running:
                ready = [t for t in waiting if all(d in done for d in t.deps)]
                for t in ready[: plan.jobs - len(running)]:
                    waiting.remove(t)
                    log_file = str(plan.out / "logs" / f"{t.name.replace(':', '-')}.log")
                    running[pool.submit(_timed, t, plan, log_file)] = t
                    log(f"[{_clock(t_start)}] {'training' if t.kind == 'train' else 'evaluating'} {t.spec.name}"
                        + (f" (log: {log_file})" if t.kind == "train" else ""))
                if not running:
                    missing = sorted({d for t in waiting for d in t.deps if d not in done})
                    raise RuntimeError(f"the plan cannot continue: missing runs {missing}")
                finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for fut in finished:
                    t = running.pop(fut)
                    try:
                        result, seconds = fut.result()
                    except Exception as e:
                        where = f" (log: {plan.out / 'logs' / (t.name + '.log')})" if t.kind == "train" else ""
                        raise RuntimeError(f"{t.name} failed{where}: {type(e).__name__}: {e}") from e
                    finish(t, result, seconds)
        except BaseException:
            # Ctrl-C reaches the workers too: each saves a checkpoint; queued tasks never start
            for fut in running:
                fut.cancel()
            raise


def _execute_distributed(plan: Plan, pending: list[Task], finish, log, rank: int, t_start: float) -> None:
    """torchrun: every process trains the runs in order (DDP); then the group closes and rank 0 evaluates."""
    import torch.distributed as dist

    setup_distributed("cuda" if plan.device != "cpu" and _cuda() else "cpu")
    for t in (t for t in pending if t.kind == "train"):
        dist.barrier()  # every process decides on the same files
        if run_state(t.spec) == "done":
            continue
        if rank == 0:
            log(f"[{_clock(t_start)}] training {t.name}")
        t0 = time.perf_counter()
        result = train_task(t.spec, None)
        if rank == 0:
            finish(t, result, time.perf_counter() - t0)
    dist.barrier()
    dist.destroy_process_group()
    if rank != 0:
        return
    for t in (t for t in pending if t.kind == "eval"):
        t0 = time.perf_counter()
        finish(t, _run_task(t, plan, None), time.perf_counter() - t0)


def _prepare_data(plan: Plan) -> None:
    """Materialise an embedded data set once, before several processes would each try; make the subset."""
    from .data import EMBEDDED, materialise

    if plan.subset:
        make_subset(*plan.subset)
    for name in {r.config().data for r in plan.runs}:
        if name in EMBEDDED:
            materialise(name)


def make_subset(source: str, folder: str | os.PathLike, per_class: tuple[int, int]) -> Path:
    """A smaller copy of a data set: the first ``per_class`` = (N, M) training and validation images of each
    class, as FOLDER/{train,val}/<class>/. Written under a temporary name and renamed: complete or absent."""
    from .data import resolve_data

    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return folder
    train, val, classes = resolve_data(source)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for split, samples, n in (("train", train, per_class[0]), ("val", val, per_class[1])):
        taken: dict[int, int] = defaultdict(int)
        for path, label in samples:
            if taken[label] < n:
                taken[label] += 1
                dst = tmp / split / classes[label] / f"{taken[label]:05d}{Path(path).suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
    tmp.rename(folder)
    return folder


def _cached_eval(plan: Plan, spec: EvalSpec) -> dict[str, Any] | None:
    path = plan.out / "eval" / f"{spec.name}.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved["result"] if saved.get("key") == _eval_cache_key(plan, spec) else None


def _save_eval(plan: Plan, spec: EvalSpec, result: dict[str, Any]) -> None:
    from .weights import atomic_write

    path = plan.out / "eval" / f"{spec.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(dict(key=_eval_cache_key(plan, spec), result=result), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(body + "\n"))


# ---------------------------------------------------------------------------------------------------------------
# Aggregation: per-seed numbers -> tables


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: no spread)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: Sequence[float], sign: bool = False) -> str:
    """'mean ± std' with two decimals (``sign``: with + or -); the mean alone for one seed."""
    mean, std = _stats(values)
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


# ---------------------------------------------------------------------------------------------------------------
# The findings as checks


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
        Claim("lrn", "LRN does not help (A-LRN vs A, Table 3)",
              [Comparison(f"A-LRN vs A at {s256}", t3("A-LRN@256"), t3("A@256"), "not_lower")]),
        Claim("depth", f"Error falls with depth (Table 3, {s256})",
              [Comparison(f"B (13 layers) vs A (11) at {s256}", t3("B@256"), t3("A@256")),
               Comparison(f"D (16) vs B (13) at {s256}", t3("D@256"), t3("B@256")),
               Comparison(f"E (19) vs A (11) at {s256}", t3("E@256"), t3("A@256"))],
              note="the paper finds the error saturating at 19 layers: E 27.3 vs D 27.0 at S=256, 25.5 vs 25.6 "
                   "jittered; D vs E is shown below the table without a verdict"),
        Claim("filters", f"Small filters, deeper, beat large filters, shallower (section 4.1, {s256})",
              [Comparison(f"B (13 layers, 3x3) vs B-5x5 (8 layers, 5x5) at {s256}", t3("B@256"), t3("B-5x5@256"))],
              note="the paper measures B-5x5's top-1 error 7% above B's (one centre crop) and gives no Table 3 "
                   "row; the paper difference is B's 28.7 against 7% more (30.7)"),
        Claim("conv1", "1x1 convs (C) help less than 3x3 (D) (Table 3, all three training scales)",
              [Comparison(f"D vs C, mean over {s256}, {s384}, {sj}", t3(*[f"D@{s}" for s in SCALE_LABELS]),
                          t3(*[f"C@{s}" for s in SCALE_LABELS]))]),
        Claim("jitter", "Scale jittering in training beats a fixed S (C, D, E; at one test scale, Table 3, and at "
                        "several, Table 4)",
              [Comparison(f"{sj} vs {s} at one test scale", t3(*jit), t3(*[f"{a}@{l}" for a in cde]))
               for s, l in ((s256, "256"), (s384, "384"))]
              + [Comparison(f"{sj} vs {s} at several test scales", [("4", c) for c in jit],
                            [("4", f"{a}@{l}") for a in cde]) for s, l in ((s256, "256"), (s384, "384"))]),
        Claim("multiscale", "Multi-scale testing beats one test scale (Table 4 vs Table 3)",
              [Comparison("fixed-S nets (B; C, D, E at both fixed S)", [("4", c) for c in fixed], t3(*fixed)),
               Comparison("jittered nets (C, D, E)", [("4", c) for c in jit], t3(*jit))]),
        Claim("densecrop", "Dense + multi-crop beats either alone (Table 5, D and E jittered)",
              [Comparison("dense+multi-crop vs dense", [("5", f"{a}@dense+multicrop") for a in "DE"],
                          [("5", f"{a}@dense") for a in "DE"]),
               Comparison("dense+multi-crop vs multi-crop", [("5", f"{a}@dense+multicrop") for a in "DE"],
                          [("5", f"{a}@multicrop") for a in "DE"])]),
        Claim("fusion", "Fusing D and E beats each net (Table 6 vs Table 5, mean over the three protocols)",
              [Comparison(f"D+E fused vs {a}", [("6", p) for p in EVAL_PROTOCOLS],
                          [("5", f"{a}@{p}") for p in EVAL_PROTOCOLS]) for a in "DE"]),
    ]  # fmt: skip


# Section 4.1: B-5x5's top-1 error is 7% above B's (one centre crop); read as relative, it stands at 1.07 x B's
PAPER_B5X5_RELATIVE = 1.07


def paper_value(table: str, cell: str) -> float | None:
    """The paper's top-1 error of a cell, or None (B-5x5's: 7% above B's, section 4.1)."""
    if (table, cell) == ("3", "B-5x5@256"):
        return round(PAPER_B5X5_RELATIVE * TABLE3[("B", "256")][0], 2)
    if table in ("3", "4"):
        arch, label = cell.split("@")
        v = (TABLE3 if table == "3" else TABLE4).get((arch, label))
    elif table == "5":
        arch, protocol = cell.split("@")
        v = TABLE5.get((arch, protocol))
    else:
        v = TABLE6.get(cell)
    return v[0] if v else None


def check(comp: Comparison, cells: dict[str, dict[str, dict[int, list[float]]]]) -> dict[str, Any]:
    """Evaluate one comparison on our per-seed numbers and on the paper's: verdict, means, spread."""

    def side(refs: list[tuple[str, str]]) -> dict[int, float] | None:
        per = [cells.get(t, {}).get(c) for t, c in refs]
        if any(p is None for p in per):
            return None
        seeds = set.intersection(*(set(p) for p in per))
        return {s: sum(p[s][0] for p in per) / len(per) for s in sorted(seeds)}

    def paper(refs: list[tuple[str, str]]) -> float | None:
        vals = [paper_value(t, c) for t, c in refs]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    out: dict[str, Any] = dict(label=comp.label, expect=comp.expect)
    pt, pb = paper(comp.treatment), paper(comp.baseline)
    out["paper_diff"] = None if pt is None or pb is None else round(pt - pb, 2)
    t, b = side(comp.treatment), side(comp.baseline)
    if t is None or b is None:
        out.update(verdict="not measured", reason="a run of this comparison is not in the plan")
        return out
    seeds = sorted(set(t) & set(b))
    diffs = [t[s] - b[s] for s in seeds]
    mean, std = _stats(diffs)
    out.update(seeds=seeds, treatment=[t[s] for s in seeds], baseline=[b[s] for s in seeds], diffs=diffs,
               diff_mean=mean, diff_std=std)  # fmt: skip
    way = "lower" if mean < 0 else "higher" if mean > 0 else "equal"
    if std is None:
        out.update(verdict="inconclusive", reason=f"one seed, no spread (treatment {way} by {abs(mean):.2f})")
    elif comp.expect == "lower":
        if mean < 0 and -mean > std:
            out.update(verdict="supported", reason=f"lower by {-mean:.2f} ± {std:.2f}")
        elif mean > 0 and mean > std:
            out.update(verdict="not supported", reason=f"higher by {mean:.2f} ± {std:.2f}")
        else:
            out.update(verdict="inconclusive", reason=f"difference {mean:+.2f} ± {std:.2f}, within one std")
    else:  # the paper says the treatment does not help: contradicted only by a gain beyond the spread
        if mean < 0 and -mean > std:
            out.update(verdict="not supported", reason=f"the treatment helps: lower by {-mean:.2f} ± {std:.2f}")
        else:
            within = "within one std" if abs(mean) <= std else "worse"
            out.update(verdict="supported", reason=f"no gain: difference {mean:+.2f} ± {std:.2f} ({within})")
    return out


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


# ---------------------------------------------------------------------------------------------------------------
# The report


def provenance_info(device: str) -> dict[str, Any]:
    """Hardware, software and code version: report.provenance plus CPU model, cores, GPUs and the git commit."""
    import torch

    from .report import provenance

    info = provenance(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    info["cpu_count"] = os.cpu_count()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info.setdefault("cpu", platform.processor() or platform.machine())
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["world_size"] = world_size()
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parents[2]
        info["git"] = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                                     text=True, timeout=10).stdout.strip()  # fmt: skip
    import torchvision

    info["torchvision"] = torchvision.__version__
    return info


class Report:
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

    def _scale_rows(self, table: str, paper: dict[tuple[str, str], tuple[float, float]],
                    paper_q: dict[str, str], multi: bool) -> str:  # fmt: skip
        """Table 3 or 4: the paper's rows (all of them at small scale; those that ran otherwise), then any
        other (net, scale) that ran, for recipes of other scales."""
        from .report import markdown_table

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
            rows.append([arch, f"{s_paper} / {self.scale_text(label)}",
                         f"{paper_q.get(label, '-')} / {self._q_text(label, multi)}", t1, t5, p1, p5])  # fmt: skip
        headers = ["net", "train S (paper / ours)", "test Q (paper / ours)", *self._headers()]
        return markdown_table(headers, rows, "lllrrrr")

    def table3(self) -> str:
        return self._scale_rows("3", TABLE3, PAPER_Q_SINGLE, multi=False)

    def table4(self) -> str:
        return self._scale_rows("4", TABLE4, PAPER_Q_MULTI, multi=True)

    def table5(self) -> str:
        from .report import markdown_table

        names = {"dense": "dense", "multicrop": "multi-crop", "dense+multicrop": "multi-crop & dense"}
        rows = []
        for (arch, p), (p1, p5) in TABLE5.items():
            t1, t5 = self._cell("5", f"{arch}@{p}")
            rows.append([f"{arch} ({self.scale_text('256-512')})", names[p], t1, t5, f"{p1:.1f}", f"{p5:.1f}"])
        return markdown_table(["net", "protocol", *self._headers()], rows, "llrrrr")

    def table6(self) -> str:
        from .report import markdown_table

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
        from .report import markdown_table

        rows = []
        for claim, results in self.checks:
            for i, r in enumerate(results):
                ours = "not run"
                if "diff_mean" in r:
                    spread = f" ± {r['diff_std']:.2f}" if r["diff_std"] is not None else ""
                    ours = f"{r['diff_mean']:+.2f}{spread}"
                paper = "-" if r["paper_diff"] is None else f"{r['paper_diff']:+.2f}"
                mark = " †" if self.affected(claim.comparisons[i]) else ""
                rows.append([claim.text if i == 0 else "", verdict(results) if i == 0 else "", r["label"] + mark,
                             paper, ours, f"{r['verdict']}: {r['reason']}"])  # fmt: skip
        headers = ["paper's finding", "verdict at this scale", "comparison (top-1 error)", "paper difference",
                   "our difference (per-seed mean ± std)", "comparison verdict"]  # fmt: skip
        return markdown_table(headers, rows, "llllrl")

    def history_lines(self) -> list[str]:
        """Earlier calls into the output folder that trained runs (their wall time is the cost of the runs)."""
        earlier = self.outcome.get("history", [])[:-1]
        if not earlier:
            return []
        trained = [h for h in earlier if h["trained"]]
        text = "; ".join(f"{h['date']}: `{h['command']}`, {h['wall_s'] / 60:.1f} min, {h['trained']} runs trained, "
                         f"{h['reused']} reused" + (f", vggnet {h['git']}" if h.get("git") else "")
                         for h in trained)  # fmt: skip
        rest = len(earlier) - len(trained)
        if rest:
            text += ("; " if text else "") + f"{rest} call(s) that trained nothing"
        return [f"- Earlier calls into this folder: {text}."]

    def recipe_text(self) -> str:
        """Epochs and learning rate of each stage, and where the shared settings differ from the paper's."""
        from .config import TrainConfig

        stages = []
        for stage in sorted({r.stage for r in self.plan.runs}):
            cfg = next(r for r in self.plan.runs if r.stage == stage).config()
            stages.append(f"stage {stage} up to {cfg.epochs} epochs at lr {cfg.lr:g}, at most {cfg.lr_decays} lr "
                          "decay(s)")  # fmt: skip
        cfg = self.plan.runs[0].config()
        keys = ("width", "fc_width", "crop_size", "batch_size", "momentum", "weight_decay", "dropout", "init", "flip",
                "colour_shift", "normalize", "lr_patience", "lr_decays", "label_smoothing", "batch_norm")  # fmt: skip
        differ = [f"{k} {getattr(cfg, k)!r} (paper {getattr(TrainConfig, k)!r})" for k in keys
                  if getattr(cfg, k) != getattr(TrainConfig, k)]  # fmt: skip
        text = "; ".join(stages) + " (the epochs are caps: the plateau schedule stops a run first)"
        return text + (f"; differs from the paper's recipe in: {', '.join(differ)}" if differ else "; otherwise the "
                       "paper's recipe")  # fmt: skip

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
        """Per stage, how many runs ended on their best validation epoch: nets still improving when stopped are
        compared before they converged (the paper trains each to its plateau)."""
        parts = []
        for stage in sorted({r.stage for r in self.plan.runs}):
            rows = [_epochs_done(r.folder) for r in self.plan.runs if r.stage == stage]
            errs = [[e["val_top1_err"] for e in rs] for rs in rows if len(rs) >= 2]
            if errs:
                improving = sum(e[-1] < min(e[:-1]) for e in errs)
                parts.append(f"stage {stage}: {improving} of {len(errs)}")
        capped = [r.name for r in self.plan.runs if (m := self.outcome["markers"].get(r.name))
                  and m.get("epochs") is not None and m["epochs"] >= r.config().epochs]  # fmt: skip
        if parts:
            parts.append(f"runs that reached their epoch cap instead of a plateau: {len(capped)}"
                         + (f" ({', '.join(capped)})" if capped else ""))  # fmt: skip
        return "; ".join(parts)

    def depth_note(self) -> str:
        """D vs E: the paper's saturation at 19 layers, shown without a verdict."""
        parts = []
        for label in ("256", "256-512"):
            d, e = self.cells["3"].get(f"D@{label}"), self.cells["3"].get(f"E@{label}")
            if d and e:
                seeds = sorted(set(d) & set(e))
                diffs = [e[s][0] - d[s][0] for s in seeds]
                parts.append(f"E - D at {self.scale_text(label)}: {fmt(diffs, sign=True)} (paper "
                             f"{TABLE3[('E', label)][0] - TABLE3[('D', label)][0]:+.1f})")  # fmt: skip
        return "; ".join(parts)

    def runs_table(self) -> str:
        from .report import markdown_table

        rows = []
        for r in self.plan.runs:
            m = self.outcome["markers"].get(r.name, {})
            err = m.get("val_top1_err")
            rows.append([r.name, r.stage, r.arch, self.scale_text(r.label), r.depends or "random",
                         m.get("epochs", "-"), "-" if err is None else f"{100 * err:.2f}",
                         f"{m.get('seconds', 0):.0f}" + (" (resumed)" if m.get("resumed") else ""),
                         "this command" if r.name in self.outcome["trained"] else "earlier"])  # fmt: skip
        headers = ["run", "stage", "net", "S", "initialised from", "epochs", "val top-1 err % (1 centre crop)",
                   "train s", "trained by"]  # fmt: skip
        return markdown_table(headers, rows, "lrllllrrl")

    # -- plots

    def plots(self) -> list[Path]:
        """Error against depth, error against test scale, learning curves of the staged runs (PNG, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = self.plan.out / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        files = []

        def mean_std(per: dict[int, list[float]] | None) -> tuple[float, float]:
            if not per:
                return math.nan, 0.0
            m, s = _stats([v[0] for v in per.values()])
            return m, s or 0.0

        # error against depth: ours (with the spread) and the paper's, for each training scale. The 3x3 nets
        # A, B, D, E are joined by a line; C (1x1 convs, as deep as D) is a lone marker beside D.
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        archs = ["A", "B", "C", "D", "E"]
        x_of = {a: i for i, a in enumerate(archs)}
        spread = f"mean ± std, {self._n_seeds()} seeds" if self._n_seeds() > 1 else "1 seed"
        for ax, title in zip(axes, ("ours", "paper")):
            for i, (label, marker) in enumerate(zip(SCALE_LABELS, "osd")):
                nets = [a for a in archs if (a, label) in TABLE3]
                if title == "ours":
                    ms = {a: mean_std(self.cells["3"].get(f"{a}@{label}")) for a in nets}
                    name = self.scale_text(label)
                else:
                    ms = {a: (TABLE3[(a, label)][0], 0.0) for a in nets}
                    name = paper_scale_text(label)
                line = [a for a in nets if a != "C"]
                shift = (i - 1) * 0.06  # keep error bars of the three scales apart
                h = ax.errorbar([x_of[a] + shift for a in line], [ms[a][0] for a in line],
                                yerr=[ms[a][1] for a in line], marker=marker, capsize=3, label=name)  # fmt: skip
                if "C" in ms:
                    ax.errorbar([x_of["C"] + shift], [ms["C"][0]], yerr=[ms["C"][1]], marker=marker, capsize=3,
                                color=h[0].get_color(), ls="none")  # fmt: skip
            ax.set_xticks(range(len(archs)), [f"{a}\n{weight_layers(a)} layers" for a in archs])
            ax.set(ylabel="top-1 error % (one test scale)",
                   title=f"Table 3, {title}" + (f" ({spread})" if title == "ours" else ""))  # fmt: skip
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(folder / "error_vs_depth.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)

        # error against test scale: dense at each Q on its own, for the nets with several training scales
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
        for ax, arch in zip(axes, ("C", "D", "E")):
            for label in SCALE_LABELS:
                key = f"{arch}@{label}"
                qs = sorted({int(k.rsplit("@", 1)[1]) for k in self.cells["perq"] if k.startswith(key + "@")})
                if not qs:
                    continue
                ms = [mean_std(self.cells["perq"].get(f"{key}@{q}")) for q in qs]
                line = ax.errorbar(qs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                                   label=f"train {self.scale_text(label)}")  # fmt: skip
                multi = mean_std(self.cells["4"].get(key))[0]
                ax.axhline(multi, color=line[0].get_color(), ls=":", lw=1)
            ax.set(title=f"{arch}: dense, one Q at a time (dotted: multi-scale)", xlabel="test scale Q")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_ylabel("top-1 error %")
        fig.tight_layout()
        files.append(folder / "error_vs_test_scale.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)

        # learning curves of the staged chains of the first seed: A -> X@256 -> X@384 -> X@jittered
        from .plots import read_metrics

        seed = self.plan.seeds[0]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
        by = {(r.arch, r.label): r for r in self.plan.runs if r.seed == seed}
        colours = {1: "C0", 2: "C1", 3: "C2", 4: "C3"}
        for ax, arch in zip(axes, ("C", "D", "E")):
            chain, cell = [], (arch, "256-512")
            while cell in by:
                chain.insert(0, by[cell])
                r = by[cell]
                cell = next(((s.arch, s.label) for s in by.values() if s.name == r.depends), None)
            start = 0
            for r in chain:
                rows = [m for m in read_metrics(r.folder) if m.get("kind") == "epoch"]
                if not rows:
                    continue
                xs = [start + m["epoch"] for m in rows]
                ax.plot(xs, [100 * m["val_top1_err"] for m in rows], "o-", ms=3, color=colours.get(r.stage, "k"),
                        label=f"{r.arch} {self.scale_text(r.label)}")  # fmt: skip
                ax.axvline(start + 0.5, color="grey", ls=":", lw=1)
                start = xs[-1]
            ax.set(title=f"staged training of {arch} (seed {seed})", xlabel="epoch (all stages)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_ylabel("val top-1 error % (one centre crop)")
        fig.tight_layout()
        files.append(folder / "learning_curves.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
        return files

    # -- the whole report

    def markdown(self, plots: Sequence[Path]) -> str:
        p, o = self.plan, self.outcome
        prov = o.get("provenance") or provenance_info(p.device)
        n = self._n_seeds()
        train_s = sum(m.get("seconds", 0) for m in o["markers"].values())
        eval_s = sum(e.get("seconds", 0) for e in o["evals"].values())
        hw = prov.get("cpu", "?") + f", {prov.get('cpu_count')} cores" + (
            f"; GPUs: {', '.join(prov['gpus'])}" if prov.get("gpus") else "")  # fmt: skip
        title = {"small": "small scale", "quick": "quick check", "medium": "an ImageNet subset at 224 crops"}.get(
            p.grid, "the paper's recipes")
        lines = [
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
        if p.grid in ("small", "quick"):
            lines += ["## Design", "", "Written before the results, which follow it whatever they say.", "",
                      SMALL_DESIGN.strip() + ("\n\nThis is the quick check: the design's runs on a few images "
                                              "for an epoch or two, not a measurement."
                                              if p.grid == "quick" else ""), ""]  # fmt: skip
        if self.small:
            step = scale_step(p.runs[0].config().crop_size)  # the paper's 32 at 224, proportional to the crop
            lines += [
                "Our scales stand for the paper's: "
                + ", ".join(f"{self.scale_text(l)} for {paper_scale_text(l)}" for l in SCALE_LABELS)
                + f"; test scales Q likewise (Q = S for a fixed S, the middle of the range for a jittered one; three "
                f"scales {{S - {step}, S, S + {step}}} for the paper's {{S - 32, S, S + 32}}, or {{Smin, "
                f"middle, Smax}}, none below the crop size). Error rates on {self.classes or 'these'} classes are not "
                "comparable with ImageNet's 1000: compare the *differences* between rows, which is what the findings "
                "below do." + (f" Top-5 error on {self.classes} classes is near 0 and says little."
                               if self.classes and self.classes <= 20 else ""),
                "",
            ]  # fmt: skip
        lines += [
            "## Findings",
            "",
            "Each finding is checked on the top-1 error, paired by seed (the runs of one seed share the data order "
            "and the staged initialisation). Difference = treatment minus baseline, in points of top-1 error "
            "(negative: the treatment is better); cells that average several table rows use their mean. "
            "*supported*: the mean difference goes the paper's way by more than one standard deviation of the "
            "per-seed differences; *not supported*: it goes the other way by more than that; *inconclusive*: "
            "within one std" + (" (or one seed, which has no spread)" if n < 2 else "") + ". For 'LRN does not "
            "help', supported means no gain beyond one std.",
            "",
            self.findings(),
            "",
        ]
        note = self.depth_note()
        if note:
            lines += [f"Depth saturation (no verdict): {note}.", ""]
        still = self.convergence_note()
        if still:
            lines += ["Runs still improving at their last epoch (the last epoch the best so far, one centre crop): "
                      f"{still}. A run still improving was compared before it converged (the paper trains each net "
                      "to the plateau of its validation error; so does every grid here, the epochs being caps).",
                      ""]  # fmt: skip
        caveats = self.caveats()
        if caveats:
            lines += ["**† Caveat: dense evaluation at this scale.** " + caveats[0], ""]
        lines += [
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
            "## Plots",
            "",
        ]  # fmt: skip
        captions = {
            "error_vs_depth.png": "Top-1 error against depth (Table 3), ours and the paper's.",
            "error_vs_test_scale.png": "Top-1 error against the test scale Q, one Q at a time (dense); dotted: "
                                       "the multi-scale average of Table 4.",
            "learning_curves.png": "Validation error of the staged runs (first seed), stage after stage: "
                                   "A, then the fixed small scale, the large one, then jittered.",
        }  # fmt: skip
        for f in plots:
            lines += [f"![{f.stem}](plots/{f.name})", "", captions.get(f.name, ""), ""]
        lines += [
            "## Runs",
            "",
            "Each run is a folder under runs/ (config.toml, weights, metrics.jsonl, learning curves); "
            "`vgg eval runs/NAME` evaluates one again.",
            "",
            self.runs_table(),
            "",
            "All numbers, per seed, are in results.json; the per-run evaluation results in eval/.",
        ]
        return "\n".join(lines) + "\n"

    def data(self) -> dict[str, Any]:
        """results.json: the plan, every per-seed number, the aggregates, the checks, provenance."""

        def agg(per: dict[int, list[float]]) -> dict[str, Any]:
            seeds = sorted(per)
            m1, s1 = _stats([per[s][0] for s in seeds])
            m5, s5 = _stats([per[s][1] for s in seeds])
            return dict(per_seed={str(s): per[s] for s in seeds}, top1_mean=m1, top1_std=s1, top5_mean=m5, top5_std=s5)

        paper = {"3": {f"{a}@{l}": v for (a, l), v in TABLE3.items()},
                 "4": {f"{a}@{l}": v for (a, l), v in TABLE4.items()},
                 "5": {f"{a}@{p}": v for (a, p), v in TABLE5.items()}, "6": dict(TABLE6)}  # fmt: skip
        return dict(
            command=self.command, grid=self.plan.grid, description=self.plan.description, seeds=self.plan.seeds,
            scales={l: list(s) for l, s in self.scales.items()}, flip=self.flip, classes=self.classes,
            wall_s=self.outcome["seconds"], trained=self.outcome["trained"], reused=self.outcome["reused"],
            history=self.outcome.get("history", []),
            tables={t: {k: agg(v) for k, v in cells.items()} for t, cells in self.cells.items()},
            paper=paper,
            findings=[dict(key=c.key, claim=c.text, verdict=verdict(r), note=c.note,
                           comparisons=[dict(x, dense_caveat=self.affected(cp)) for x, cp in zip(r, c.comparisons)])
                      for c, r in self.checks],
            caveats=self.caveats(),  # fmt: skip
            runs=[dict(asdict(r), marker=self.outcome["markers"].get(r.name)) for r in self.plan.runs],
            evals=self.outcome["evals"],
            provenance=self.outcome.get("provenance") or provenance_info(self.plan.device),
        )  # fmt: skip

    def write(self) -> Path:
        """Write plots, REPORT.md and results.json into the output folder; returns REPORT.md's path."""
        from .weights import atomic_write

        plots: list[Path] = []
        try:
            plots = self.plots()
        except Exception as e:  # noqa: BLE001 - a plotting problem never loses the numbers
            print(f"warning: plots failed ({type(e).__name__}: {e})", file=sys.stderr)
        out = self.plan.out
        report = out / "REPORT.md"
        text = self.markdown(plots)
        atomic_write(report, lambda tmp: Path(tmp).write_text(text))
        body = json.dumps(self.data(), indent=1, default=str)
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(body + "\n"))
        return report


# ---------------------------------------------------------------------------------------------------------------
# The public entry point and the command line


def make_plan(scale: str = "small", out: str | os.PathLike | None = None, seeds: Sequence[int] | None = None,
              data: str | None = None, recipes: str | os.PathLike | None = None, device: str | None = None,
              jobs: int | None = None) -> Plan:  # fmt: skip
    """The plan of a grid: "small" (default), "quick", "medium" or "paper" (see the module doc)."""
    if scale == "paper":
        out = Path(out or "reproduce")
        return paper_plan(out.resolve(), recipes=recipes, data=data, seeds=seeds, device=device or "auto")
    if scale not in GRIDS:
        raise ValueError(f"unknown scale {scale!r}; choose small, quick, medium or paper")
    grid = GRIDS[scale]
    if data and grid.needs_data:
        check_data_folder(data, f"--scale {scale} --data")
    out = Path(out or ("reproduce" if scale == "small" else f"reproduce-{scale}"))
    return small_plan(grid, out.resolve(), seeds=seeds, data=data, device=device or grid.device, jobs=jobs)


def check_data_folder(data: str, flag: str) -> None:
    """An ImageNet-style folder (train/ and val/ of class folders) or a clear one-line error."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ValueError(f"{flag} {data}: no such folder; give an ImageNet-style folder with train/ and val/ "
                         f"class folders")  # fmt: skip
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise ValueError(f"{flag} {data}: no {' or '.join(s + '/' for s in missing)} in it; the medium grid takes "
                         f"an ImageNet-style folder with train/ and val/ class folders")  # fmt: skip


def reproduce(scale: str = "small", out: str | os.PathLike | None = None, seeds: Sequence[int] | None = None,
              data: str | None = None, recipes: str | os.PathLike | None = None, device: str | None = None,
              jobs: int | None = None, command: str | None = None,
              log: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Run the paper's experiments at ``scale`` and write OUT/REPORT.md (returned), results.json and plots.

    Finished runs and their evaluations in ``out`` are reused; interrupted runs are resumed. Under torchrun,
    processes other than rank 0 return after training, with the output folder as their result.
    """
    plan = make_plan(scale, out, seeds, data, recipes, device, jobs)
    if not is_main():
        log = _quiet  # under torchrun, rank 0 speaks for all
    log(f"reproduce ({plan.grid}): {len(plan.runs)} runs, {len(plan.evals)} evaluations, {plan.jobs} job(s), "
        f"output in {plan.out}")  # fmt: skip
    if plan.grid == "medium" and is_main():  # hours of GPU time: say so first
        log(plan.describe())
        log(_estimate(plan))
    outcome = execute(plan, log)
    if not is_main():
        return plan.out
    command = command or _command_line()
    outcome["history"] = _record_history(plan, outcome, command)
    report = Report(plan, outcome, command).write()
    from .localisation import reproduce_localisation

    reproduce_localisation(plan, report, log)  # Appendix A's tables, appended to REPORT.md (small and quick grids)
    log(f"done in {outcome['seconds'] / 60:.1f} min: {report}")
    return report


def _quiet(_: str) -> None:
    pass


def _estimate(plan: Plan) -> str:
    """The plan's cost in GPU-hours (``vggnet.budget``), at a step rate measured here when there is a GPU."""
    from .budget import estimate_text, measure_rate

    crop = plan.runs[0].config().crop_size
    return estimate_text(plan, measure_rate(crop, plan.device))


def _record_history(plan: Plan, outcome: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """Append this invocation to OUT/history.jsonl and return all of them: a report made by a second call that
    reused every run still says how long the calls that trained them took."""
    entry = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), command=command, wall_s=outcome["seconds"],
                 trained=len(outcome["trained"]), reused=len(outcome["reused"]), jobs=plan.jobs,
                 git=outcome.get("provenance", {}).get("git"))  # fmt: skip
    path = plan.out / "history.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    history = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            history.append(json.loads(line))
    return history


def _command_line(args: argparse.Namespace | None = None) -> str:
    """The command as typed (`vgg ...`, `python -m vggnet ...`); from the parsed options when called otherwise."""
    name = Path(sys.argv[0]).name
    if "reproduce" in sys.argv[1:2]:
        if name == "vgg":
            return shlex.join(["vgg", *sys.argv[1:]])
        if name == "__main__.py":
            return shlex.join(["python", "-m", "vggnet", *sys.argv[1:]])
    if args is None:
        return shlex.join(sys.argv)
    words = ["vgg", "reproduce"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg reproduce [--quick | --scale small|quick|medium|paper] [--data DIR] [--out DIR] ...`."""
    parser.add_argument("--scale", choices=("small", "quick", "medium", "paper"), default=None,
                        help="small (default): mnist-clutter digits, narrow nets, 64 crops, 3 seeds, about 1.5 hours "
                             "on 2 CPU cores; quick: a plumbing check with every table filled; medium: the paper's "
                             "grid on an ImageNet-style subset (--data DIR) at 224 crops on one GPU, with an "
                             "estimate of GPU-hours first; paper: the ImageNet recipes of recipes/imagenet (launch with torchrun for "
                             "several GPUs)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the same as --scale quick")
    parser.add_argument("--data", default=None,
                        help="the data: an ImageNet folder with train/ and val/ for --scale paper (default: the "
                             "recipes' data) and --scale medium (required: a subset such as Imagenette); another data "
                             "set for the small grids (default mnist-clutter)")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="output folder: runs, evaluations, REPORT.md, results.json, plots (default ./reproduce, "
                             "./reproduce-quick for --quick); finished runs in it are reused")  # fmt: skip
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds (default 0,1,2 for small, 0 for quick, medium and paper)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at a time, each in its own process with one thread (default: one per "
                             "CPU core on the CPU; 1 on a GPU and for --scale paper)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default cpu for the small grids, "
                                                       "auto for --scale paper)")  # fmt: skip
    parser.add_argument("--recipes", default=None,
                        help="folder of TOML recipes for --scale paper (default: the repository's recipes/imagenet)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (runs stage by stage, with the equivalent vgg train / vgg eval "
                             "commands) without training")  # fmt: skip


def run_reproduce_cli(args: argparse.Namespace) -> int:
    """`vgg reproduce`: run the plan (or print it with --dry-run) and write the report."""
    scale = "quick" if args.quick else (args.scale or "small")
    if args.quick and args.scale not in (None, "quick"):
        raise ValueError(f"--quick and --scale {args.scale} contradict each other")
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
        if not seeds:
            raise ValueError("--seeds is empty")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        plan = make_plan(scale, args.out, seeds, args.data, args.recipes, args.device, args.jobs)
        print(plan.describe())
        if plan.grid == "medium":
            print()
            print(_estimate(plan))
        return 0
    reproduce(scale, args.out, seeds, args.data, args.recipes, args.device, args.jobs, command=_command_line(args))
    return 0


__all__ = [
    "GRIDS", "Plan", "Report", "RunSpec", "EvalSpec", "TABLE3", "TABLE4", "TABLE5", "TABLE6",
    "add_reproduce_arguments", "claims", "check", "collect", "execute", "make_plan", "make_subset", "paper_plan",
    "reproduce", "run_reproduce_cli", "scales_for", "small_plan", "verdict",
]  # fmt: skip
