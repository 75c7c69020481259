"""`vgg eval`, `vgg fuse` and `vgg predict`: their options and the glue to vggnet.evaluation."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.folders import list_images
from ..evaluation import (
    evaluate,
    parse_scales,
    predict,
    resolve_eval_samples,
    weights_net,
    write_eval_files,
    write_eval_report,
)
from ..pretrained import NORMALIZE_FORMS_OF_WEIGHTS, NORMALIZE_HELP, WEIGHTS_FORMS
from ..report import json_text
from ..runs import Run, is_run, load_run


def _add_common(p: argparse.ArgumentParser, default_protocol: str) -> None:
    p.add_argument(
        "--protocol",
        default=default_protocol,
        help="dense (whole image), multicrop (5x5 grid of crops from edge to edge, x2 flips), "
        "dense+multicrop (both averaged) or center (one centre crop, no flip: the classic baseline); "
        "a comma-separated list prints them side by side like the paper's Table 5 "
        f"(default {default_protocol})",
    )
    p.add_argument(
        "--scales",
        default=None,
        help="test scales Q, comma-separated (e.g. 256,384,512); 'multi' (default: the paper's "
        "{S-S/8, S, S+S/8} for a fixed S, {Smin, (Smin+Smax)/2, Smax} for a jittered run; one "
        "scale for center) or 'single' (S or (Smin+Smax)/2)",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the horizontally flipped views (default: on, unless a run was trained without "
        "flips, as the digit demos are: a net that never saw mirrored images is not asked about them)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="views per forward pass: whole images (dense) or crops (default 256)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default auto)")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA and for a CPU with native bf16, AMX or AVX512-bf16, "
        "off elsewhere; the report says which ran); --no-amp computes in float32 everywhere",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="SOURCE",
        help=f"weights to evaluate besides (or instead of) runs: {WEIGHTS_FORMS} (downloaded on first "
        "use); repeat to fuse",
    )
    p.add_argument(
        "--normalize",
        default=None,
        metavar=NORMALIZE_FORMS_OF_WEIGHTS,
        help="the input convention of --weights that do not carry one: imagenet (torchvision's mean and "
        "std), caffe (the authors' BGR 0-255 minus mean, folded into conv1), mean:R,G,B (0-255)",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg eval RUN... [--data DIR] [--protocol ...] [--scales ...]`."""
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", help="run folder(s); several (with --weights) are evaluated and fused"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="DIR/<class>/<image>, a folder with a val/ subfolder, or an embedded data set name "
        "(default: the first run's own validation data)",
    )
    _add_common(parser, "dense")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a fixed random subset of N images")
    parser.add_argument(
        "--workers", type=int, default=None, help="image decoding processes (default: min(8, CPUs-1) on CUDA, 0 on CPU)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the report files (Markdown, JSON with per-class accuracy and confusion matrices, "
        "confusion-matrix PNGs for up to 100 classes) into DIR instead of each RUN/eval/; "
        "evaluations of --weights alone write files only with --out",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write the report files")


def _flip(args: argparse.Namespace, runs: Sequence[Run]) -> bool:
    """--flip / --no-flip, or by default whether every run was trained with flips."""
    if args.flip is not None:
        return args.flip
    trained = all(r.config.get("flip", True) for r in runs)
    if not trained:
        print("note: no flipped views (a run was trained without flips; --flip adds them)", file=sys.stderr)
    return trained


class _Progress:
    """`vgg eval`'s progress on a terminal: a tqdm bar over the images, on stderr; nothing when redirected."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cli_nets(args: argparse.Namespace, runs: Sequence[Run]) -> list[Any]:
    if args.normalize and not args.weights:
        raise ValueError(f"--normalize applies to --weights (a run carries its own normalisation); {NORMALIZE_HELP}")
    return list(runs) + [weights_net(w, args.normalize) for w in args.weights]


def run_eval_cli(args: argparse.Namespace) -> int:
    """`vgg eval`: evaluate the runs and --weights (and their fusion), print the table, write it into each RUN/eval/."""
    runs = [load_run(p) for p in args.runs]
    if not runs and not args.weights:
        raise ValueError("nothing to evaluate: give run folders (vgg eval RUN) or --weights FILE|SOURCE --data DIR")
    if not runs and (args.data is None or not Path(args.data).expanduser().is_dir()):
        raise ValueError(
            f"--weights have no validation data of their own; pass --data DIR (DIR/<class>/<image>)"
            f"{'' if args.data is None else f', not {args.data!r}'}"
        )
    if args.out and Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
        raise ValueError(f"--out {args.out} is not a folder: name a folder for the report files (made if missing)")
    nets = _cli_nets(args, runs)
    samples: Any = resolve_eval_samples(runs[0], args.data) if runs else Path(args.data).expanduser()
    progress = _Progress()
    try:
        result = evaluate(
            nets,
            samples,
            protocols=args.protocol,
            scales=parse_scales(args.scales),
            flip=_flip(args, runs),
            batch_size=args.batch_size,
            device=args.device,
            limit=args.limit,
            workers=args.workers,
            log=progress,
            amp=args.amp,
        )
    finally:
        progress.close()
    result.data = args.data or f"the validation data of {runs[0].path} (data = {runs[0].config.get('data')!r})"
    print(json_text(result.to_dict()) if args.json else result.markdown())
    if args.no_save:
        return 0
    written = (
        write_eval_files(result, Path(args.out).expanduser())
        if args.out
        else write_eval_report(result, [r.path for r in runs])
    )
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg fuse RUN1 RUN2 ...`: `vgg eval` of two or more runs (section 4.4)."""
    add_eval_arguments(parser)


def run_fuse_cli(args: argparse.Namespace) -> int:
    """`vgg fuse`: each run and the fusion of all (posteriors averaged)."""
    if len(args.runs) + len(args.weights) < 2:
        raise ValueError("vgg fuse needs at least two nets, run folders or --weights (for one, use vgg eval)")
    return run_eval_cli(args)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg predict RUN [RUN...] IMAGE... [--top 5] [--json] [--scales ...]`."""
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_IMAGE",
        help="run folders (fused; none with --weights), then image files or folders of images",
    )
    parser.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    _add_common(parser, "dense")


def run_predict_cli(args: argparse.Namespace) -> int:
    """`vgg predict`: the top classes of each image with their posteriors (dense, multi-scale, flips)."""
    runs = []
    rest = list(args.paths)
    while rest and is_run(rest[0]):
        runs.append(load_run(rest.pop(0)))
    if not runs and not args.weights:
        raise FileNotFoundError(
            f"{args.paths[0]} is not a run folder (it needs model.safetensors and config.toml); "
            f"or give --weights FILE|SOURCE"
        )
    images: list[Path] = []
    for p in map(Path, rest):
        if p.is_dir():
            images += map(Path, list_images(p))
        elif p.is_file():
            images.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    if not images:
        raise ValueError("no images given: vgg predict RUN IMAGE...")
    nets = _cli_nets(args, runs)
    skipped: list[str] = []  # one unreadable file does not abort the others: it is named, and the exit code is 1
    preds = predict(
        nets,
        images,
        top=args.top,
        protocol=args.protocol,
        scales=parse_scales(args.scales),
        flip=_flip(args, runs),
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        skipped=skipped,
    )
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable image(s): {'; '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=1))
        return 1 if skipped else 0
    for p in preds:
        print(p.image)
        shown = [f"{w} {n}" for w, n in zip(p.wnids, p.names)] if p.wnids else p.names  # ImageNet: id and name
        width = max(len(n) for n in shown)
        for rank, (name, prob) in enumerate(zip(shown, p.probs), 1):
            print(f"  {rank}. {name:<{width}}  {prob:.4f}")
    return 1 if skipped else 0


__all__ = [
    "add_eval_arguments",
    "add_fuse_arguments",
    "add_predict_arguments",
    "run_eval_cli",
    "run_fuse_cli",
    "run_predict_cli",
]
