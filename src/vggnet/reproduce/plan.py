"""The plan of a reproduction: the training runs in the paper's stages, then the evaluations.

The paper's staged initialisation (section 3.1) is the plan's dependency graph: net A (and A-LRN) from random
weights; B..E and B-5x5 (section 4.1) at the small fixed scale from the A run (train() copies A's first four
convs and three FC layers when the source is net A; B-5x5, whose convs are 5x5, takes the FC layers only); the
large fixed scale from the small one with lr / 10; the jittered nets fine-tuned from the large-scale ones. The
small grids come from ``grids`` (``small_plan``), the paper's from the TOML recipes of recipes/imagenet
(``paper_plan``). Every run is evaluated at the test scales of ``vggnet.scales``, the rule `vgg eval` uses too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..architectures import parse_name
from ..config import TrainConfig, read_recipe, resolve
from ..runtime import world_size
from ..scales import eval_scales
from .grids import GRIDS, Grid
from .published import EVAL_PROTOCOLS, PAPER_SCALES, TABLE4, paper_scale_text


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
        return resolve(self.overrides, recipe=self.recipe)

    def command(self, launcher: str = "vgg") -> str:
        """The `vgg train` command line that makes this run on its own."""
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
            return [
                shlex.join(
                    ["vgg", "fuse", *folders, "--protocol", ",".join(EVAL_PROTOCOLS), "--scales", multi, *common]
                )
            ]
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
            lines.append(
                f"data: {_shown(folder)}, made from {src} when the plan runs (the first {n} training and "
                f"{m} validation images of each class)"
            )
        if self.launcher != "vgg":
            lines.append(
                f"launch: {self.launcher.replace(' -m vggnet', '')} -m vggnet reproduce ... runs the "
                f"stages in order on every process; evaluation runs on rank 0 afterwards"
            )
        for stage in sorted({r.stage for r in self.runs}):
            lines += ["", f"Stage {stage}: {titles.get(stage, '')}"]
            for r in (r for r in self.runs if r.stage == stage):
                cfg = r.config()
                s = f"S={r.scale[0]}" if r.scale[0] == r.scale[1] else f"S in [{r.scale[0]}, {r.scale[1]}]"
                src = f", init from {r.depends}" if r.depends else ""
                small = r.label in PAPER_SCALES and r.scale != PAPER_SCALES[r.label]
                paper = f" (paper {paper_scale_text(r.label)})" if small else ""
                lines.append(f"  {r.name}: {r.arch}, {s}{paper}, up to {cfg.epochs} epochs, lr {cfg.lr:g}{src}")
                lines.append(f"    {r.command(self.launcher)}")
        lines += [
            "",
            "Evaluations (dense at each test scale and multi-scale; D and E jittered: dense, multi-crop, "
            "both, and their fusion):",
        ]
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


def _scale_name(arch: str, scale: tuple[int, int]) -> str:
    s = f"S{scale[0]}" if scale[0] == scale[1] else f"S{scale[0]}-{scale[1]}"
    return f"{arch}-{s}"


def _grid_data(grid: Grid, out: Path, data: str | None) -> tuple[dict[str, Any], tuple[str, str, Any] | None]:
    """The grid's shared settings with its data (``data`` over the grid's own), and the subset to make when the
    grid trains on a smaller copy of the data (source, copy, the grid's subset; see _prepare_data)."""
    base = dict(grid.base)
    if grid.needs_data and not data:
        raise ValueError(
            f"--grid {grid.name} needs --data DIR: an ImageNet-style folder with train/ and val/ class "
            f"folders (for example Imagenette or ImageNet-100)"
        )
    if data:
        base["data"] = data
    if not grid.subset:
        return base, None
    source = base["data"]
    name = f"{Path(source).name}-{grid.subset[0]}-{grid.subset[1]}"
    subset = (source, str(out / "data" / name), grid.subset)
    base["data"] = subset[1]
    return base, subset


def small_plan(
    grid: Grid,
    out: Path,
    seeds: Sequence[int] | None = None,
    data: str | None = None,
    device: str = "cpu",
    jobs: int | None = None,
) -> Plan:
    """The staged plan of a small grid: every cell of ``grid`` for every seed."""
    seeds = list(seeds if seeds is not None else grid.seeds)
    base, subset = _grid_data(grid, out, data)
    specs: list[RunSpec] = []
    for seed in seeds:
        names = {}
        for cell in grid.cells:
            scale = grid.scales[cell.label]
            name = f"{_scale_name(cell.arch, scale)}-s{seed}"
            names[(cell.arch, cell.label)] = name
            depends = names[cell.source] if cell.source else None
            overrides = dict(
                base,
                **dict(cell.settings),
                arch=cell.arch,
                scale_min=scale[0],
                scale_max=scale[1],
                epochs=cell.epochs,
                lr=cell.lr,
                seed=seed,
                device=device,
                out=str(out / "runs" / name),
            )
            if depends:
                overrides["init_from"] = str(out / "runs" / depends)
            stage = 1 if not cell.source else 1 + next(s.stage for s in specs if s.name == depends)
            specs.append(RunSpec(name, cell.arch, cell.label, scale, seed, stage, depends, overrides))
    specs.sort(key=lambda r: (r.stage, r.seed))  # stage by stage: the order of the paper (and of the dry run)
    jobs = jobs or default_jobs(device)
    return Plan(
        grid.name,
        grid.description,
        out,
        specs,
        _evals(specs, seeds),
        seeds,
        jobs,
        device,
        flip=bool(grid.base.get("flip", True)),
        subset=subset,
    )


def default_recipes() -> Path:
    """recipes/imagenet of the repository this package runs from (or of the current directory)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "recipes" / "imagenet").is_dir():
            return root / "recipes" / "imagenet"
    raise FileNotFoundError(
        "cannot find recipes/imagenet next to the package or in the current directory; "
        "pass --recipes DIR (the repository's recipes/imagenet)"
    )


def paper_plan(
    out: Path,
    recipes: str | os.PathLike | None = None,
    data: str | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "auto",
) -> Plan:
    """The paper's ImageNet plan: one run per recipe in ``recipes`` (TOML files in name order), per seed.

    A recipe's ``init_from`` that names another recipe's ``out`` becomes a dependency on that run of the same
    seed (and its folder under OUT/runs); ``out``, ``seed`` and (when given) ``data`` are replaced.
    """
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
                    raise ValueError(
                        f"recipe {f.name} starts from {src}, whose recipe comes later in name "
                        f"order; rename the files so that sources come first"
                    ) from None
            specs.append(RunSpec(name, arch, label, cfg_scale, seed, stage, depends, overrides, recipe=str(f)))
    specs.sort(key=lambda s: (s.stage, s.seed))
    launcher = "torchrun --nproc-per-node=NGPUS -m vggnet" if world_size() <= 1 else "vgg"
    return Plan(
        "paper",
        f"the paper's ImageNet recipes from {folder}",
        out,
        specs,
        _evals(specs, seeds),
        seeds,
        jobs=1,
        device=device,
        flip=True,
        launcher=launcher,
    )


def eval_scales_of(spec: RunSpec) -> tuple[int, list[int]]:
    """(single, multi): the test scales Q of a run by ``vggnet.scales``, the rule `vgg eval` uses too."""
    lo, hi = spec.scale
    crop = spec.config().crop_size
    return eval_scales(lo, hi, crop, multi=False)[0], eval_scales(lo, hi, crop)


def _evals(specs: Sequence[RunSpec], seeds: Sequence[int]) -> list[EvalSpec]:
    """Every run at its test scales; per seed, D and E jittered with every protocol and fused."""
    out = []
    for s in specs:
        single, multi = eval_scales_of(s)
        if (s.arch, s.label) not in TABLE4:
            multi = [single]  # A and A-LRN appear in Table 3 only: one test scale
        out.append(EvalSpec(s.name, "scales", [s.name], s.seed, single, multi))
    for seed in seeds:
        pair = [next((s for s in specs if s.seed == seed and s.label == "256-512" and s.arch == a), None) for a in "DE"]
        if all(pair):
            single, multi = eval_scales_of(pair[0])
            out.append(EvalSpec(f"D+E-jittered-s{seed}", "protocols", [p.name for p in pair], seed, single, multi))
    return out


def default_jobs(device: str) -> int:
    """Runs at a time: one per CPU core on the CPU (each with one thread), one on a GPU."""
    if device.startswith("cuda") or (device == "auto" and cuda_available()):
        return 1
    return max(1, os.cpu_count() or 1)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def make_plan(
    grid: str = "small",
    out: str | os.PathLike | None = None,
    seeds: Sequence[int] | None = None,
    data: str | None = None,
    recipes: str | os.PathLike | None = None,
    device: str | None = None,
    jobs: int | None = None,
) -> Plan:
    """The plan of a grid: "small" (default), "quick", "medium" or "paper" (see the module doc)."""
    if grid == "paper":
        out = Path(out or "reproduce")
        return paper_plan(out.resolve(), recipes=recipes, data=data, seeds=seeds, device=device or "auto")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose small, quick, medium or paper")
    cells = GRIDS[grid]
    if data and cells.needs_data:
        check_data_folder(data, f"--grid {grid} --data")
    out = Path(out or ("reproduce" if grid == "small" else f"reproduce-{grid}"))
    return small_plan(cells, out.resolve(), seeds=seeds, data=data, device=device or cells.device, jobs=jobs)


def check_data_folder(data: str, flag: str) -> None:
    """An ImageNet-style folder (train/ and val/ of class folders) or a clear one-line error."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"{flag} {data}: no such folder; give an ImageNet-style folder with train/ and val/ class folders"
        )
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise ValueError(
            f"{flag} {data}: no {' or '.join(s + '/' for s in missing)} in it; the medium grid takes "
            f"an ImageNet-style folder with train/ and val/ class folders"
        )


__all__ = [
    "EvalSpec",
    "Plan",
    "RunSpec",
    "check_data_folder",
    "default_jobs",
    "default_recipes",
    "make_plan",
    "paper_plan",
    "small_plan",
    "eval_scales_of",
]
