"""`vgg localize train` and `vgg localize eval`: their options and the glue to vggnet.localisation."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..config import field_help
from ..localisation import FINETUNE, REGRESSIONS, LocConfig, evaluate_localisation, markdown_tables, train_localisation
from ..pretrained import NORMALIZE_FORMS_OF_WEIGHTS, WEIGHTS_FORMS
from ..report import write_report

# the options of `vgg localize train` beside --from, --regression and --finetune: LocConfig's fields of these names
_TRAIN_OPTIONS = (
    "data",
    "boxes",
    "scale",
    "epochs",
    "batch_size",
    "accum_steps",
    "lr",
    "max_per_class",
    "val_per_class",
    "workers",
    "device",
    "seed",
    "out",
    "max_steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
)

_HELP = {
    "data": "data with boxes: an embedded set or a folder with a boxes.csv or VOC XML files (default: mnist-scale "
    "when the classification run's data is an embedded set, else its data)",
    "boxes": "a box CSV (default: boxes.csv at the data's root, or VOC XML beside the images)",
    "scale": "training scale S (default 0: the classification run's smallest S; the paper: the same S)",
    "epochs": "the most epochs to run; the plateau schedule may stop earlier",
    "lr": "initial learning rate (the paper: 1e-3)",
    "max_per_class": "train on the first N images of each class (0: all)",
    "val_per_class": "validate on the first N images of each class (0: all)",
    "out": "run folder; default: a new numbered folder under ./runs/localize",
}


def add_localize_arguments(parser: argparse.ArgumentParser) -> None:
    """`vgg localize train ...` and `vgg localize eval ...`."""
    sub = parser.add_subparsers(dest="localize_command", metavar="train|eval")
    p = sub.add_parser(
        "train",
        help="train a box-regression net from a classification run (resumable; several GPUs under torchrun)",
        description="Trains through the same engine as `vgg train`: the "
        "same run folder, exact resume, progress lines and DDP.",
    )
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="SOURCE",
        help="the classification net to start from: "
        f"{WEIGHTS_FORMS}; a run gives S, the input convention, the classes and the data, weights give "
        "theirs (their resize as S; --data is then needed)",
    )
    p.add_argument(
        "--normalize",
        dest="source_normalize",
        default=None,
        metavar=NORMALIZE_FORMS_OF_WEIGHTS,
        help="the input convention of --from weights that carry none (a run carries its own)",
    )
    p.add_argument(
        "--regression", choices=REGRESSIONS, default=None, help="scr: one box; pcr: a box per class (default pcr)"
    )
    p.add_argument("--finetune", choices=FINETUNE, default=None, help="all layers, or the FC layers only (default all)")
    for name in _TRAIN_OPTIONS:
        f = next(f for f in fields(LocConfig) if f.name == name)
        text = _HELP.get(name) or f.metadata.get("help") or field_help().get(name, "")
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=type(f.default),
            default=None,
            help=f"{text} (default {f.default!r})",
        )
    p.add_argument("--resume", metavar="LOCRUN", help="continue a localisation run from its newest checkpoint")
    p.set_defaults(func=run_localize_train_cli)
    p = sub.add_parser("eval", help="localisation errors (Tables 8/9 of the paper): centre crop or dense + merging")
    p.add_argument("runs", nargs="+", metavar="LOCRUN", help="localisation run folders")
    p.add_argument("--protocol", default="center,dense", help="center, dense, or both comma-separated")
    p.add_argument("--scales", help="test scales Q, comma-separated (default: the run's S)")
    p.add_argument(
        "--classifier",
        metavar="SOURCE",
        help="the classification net that rates the boxes: "
        f"{WEIGHTS_FORMS} (default: the one the localisation net was made from)",
    )
    p.add_argument("--data", help="data with boxes (default: the localisation run's)")
    p.add_argument("--boxes", help="a box CSV (default: the data's boxes.csv or VOC XML)")
    p.add_argument("--max-per-class", type=int, default=0, help="test on the first N images of each class")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="report folder (default: the first run's eval/)")
    p.set_defaults(func=run_localize_eval_cli)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def run_localize_train_cli(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in ("regression", "finetune", "source_normalize", *_TRAIN_OPTIONS)}
    given = {k: v for k, v in given.items() if v is not None}
    if args.resume:
        run = train_localisation(given, resume=args.resume)
    else:
        if not args.from_run:
            raise ValueError(
                "vgg localize train needs --from SOURCE (a classification run or weights) or --resume LOCRUN"
            )
        run = train_localisation(LocConfig(from_run=args.from_run, **given))
    print(f"localisation run: {run}")
    print(f"evaluate it with: vgg localize eval {run} --protocol center,dense")
    return 0


def run_localize_eval_cli(args: argparse.Namespace) -> int:
    protocols = [p.strip().replace("centre", "center") for p in args.protocol.split(",") if p.strip()]
    for p in protocols:
        if p not in ("center", "dense"):
            raise ValueError(f"--protocol: unknown protocol {p!r}; use center, dense or center,dense")
    scales = None
    if args.scales:
        try:
            scales = [int(v) for v in args.scales.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--scales takes comma-separated integers, got {args.scales!r}") from None
    results = [
        evaluate_localisation(run, p, scales, args.classifier, args.data, args.max_per_class, args.boxes, args.device)
        for run in args.runs
        for p in protocols
    ]
    text = markdown_tables(results)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "eval"
    md, _ = write_report(out, "localize", text, {"results": [r.to_dict() for r in results]})
    print(text)
    print(f"report: {md}")
    return 0


__all__ = ["add_localize_arguments", "run_localize_eval_cli", "run_localize_train_cli"]
