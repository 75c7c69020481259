"""`vgg reproduce`'s options and their checks; the work is ``vggnet.reproduce``.

``--grid small|quick|medium|paper`` chooses the grid (in `vgg train`, --scale is the training scale S). ``--seeds
N`` runs seeds 0..N-1; ``--seeds 0,3,5`` those seeds.
"""

from __future__ import annotations

import argparse
import shlex

from ..reproduce import estimate, make_plan, reproduce, typed_command

GRID_NAMES = ("small", "quick", "medium", "paper")


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg reproduce [--quick | --grid small|quick|medium|paper] [--data DIR] [--out DIR] ...`."""
    parser.add_argument(
        "--grid",
        choices=GRID_NAMES,
        default=None,
        help="small (default): mnist-clutter digits, narrow nets, 64 crops, 3 seeds, about 45 minutes "
        "on 2 CPU cores; quick: a plumbing check with every table filled; medium: the paper's "
        "grid on an ImageNet-style subset (--data DIR) at 224 crops on one GPU, with an "
        "estimate of GPU-hours first; paper: the ImageNet recipes of recipes/imagenet (launch "
        "with torchrun for several GPUs)",
    )
    parser.add_argument("--quick", action="store_true", help="the same as --grid quick")
    parser.add_argument(
        "--data",
        default=None,
        help="the data: an ImageNet folder with train/ and val/ for --grid paper (default: the "
        "recipes' data) and --grid medium (required: a subset such as Imagenette); another data "
        "set for the small grids (default mnist-clutter)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder: runs, evaluations, REPORT.md, results.json, plots (default ./reproduce, "
        "./reproduce-quick for --quick); finished runs in it are reused",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="N|S1,S2,...",
        help="how many seeds (N: seeds 0..N-1) or which (comma-separated, e.g. 0,3,5); default 3 "
        "for small, 1 for quick, medium and paper",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at a time, each in its own process with one thread (default: one per "
        "CPU core on the CPU; 1 on a GPU and for --grid paper)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or auto (default cpu for the small grids, auto for --grid paper)",
    )
    parser.add_argument(
        "--recipes",
        default=None,
        help="folder of TOML recipes for --grid paper (default: the repository's recipes/imagenet)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (runs stage by stage, with the equivalent vgg train / vgg eval commands) without training",
    )


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list of seeds ("0,3,5"; "4," is seed 4)."""
    parts = [s.strip() for s in text.split(",")]
    try:
        values = [int(s) for s in parts if s]
    except ValueError:
        raise ValueError(f"--seeds takes a count N or comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError("--seeds is empty; give a count (--seeds 3) or seeds (--seeds 0,3,5)")
    if len(parts) > 1:
        return values
    if values[0] < 1:
        raise ValueError(f"--seeds {text}: a count of seeds must be at least 1 (for seed 0 alone: --seeds 1)")
    return list(range(values[0]))


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (`vgg ...`, `python -m vggnet ...`); rebuilt from the parsed options otherwise."""
    typed = typed_command()
    if typed:
        return typed
    words = ["vgg", "reproduce"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def run_reproduce_cli(args: argparse.Namespace) -> int:
    """`vgg reproduce`: run the plan (or print it with --dry-run) and write the report."""
    grid = "quick" if args.quick else (args.grid or "small")
    if args.quick and args.grid not in (None, "quick"):
        raise ValueError(f"--quick and --grid {args.grid} contradict each other")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        plan = make_plan(grid, args.out, seeds, args.data, args.recipes, args.device, args.jobs)
        print(plan.describe())
        if plan.grid == "medium":
            print()
            print(estimate(plan))
        return 0
    reproduce(grid, args.out, seeds, args.data, args.recipes, args.device, args.jobs, command=command_line(args))
    return 0


__all__ = ["add_reproduce_arguments", "command_line", "parse_seeds", "run_reproduce_cli"]
