"""Where a run starts: its folder, its config (a new one, or the saved one continued), its checkpoint, and the
weights it is initialised from (``--init-from``: net A's layers into a deeper net, a run to fine-tune, or released
weights with the input convention they expect).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from .. import runs
from ..config import (
    TrainConfig,
    config_changes,
    from_dict,
    read_run_config,
    read_toml,
    refuse_unsafe_changes,
    toml_text,
)
from ..files import atomic_write_text, overlapping
from ..pretrained import convention, init_from_pretrained, resolve_weights
from ..runtime import Dist, is_main
from ..weights import ARCH_KEY, infer_config, init_from_net_a, read_state_dict, unwrap
from .checkpoints import newest_valid_checkpoint, remove_stale_temporaries, trim_metrics
from .finetune import resolve_config
from .progress import Logger


def new_run_dir(root: Path = Path("runs")) -> Path:
    """The next free numbered folder under ``root`` (runs/001, runs/002, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    return root / f"{max(taken, default=0) + 1:03d}"


def claim_run_dir(root: Path = Path("runs")) -> Path:
    """Create and return the next free numbered folder under ``root``: two runs started at once never share one."""
    while True:
        run = new_run_dir(root)
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue  # taken between the look and the mkdir: the next number


def check_out_apart(cfg: TrainConfig, run: Path) -> None:
    """A run folder may not be, contain or lie inside a data folder it reads: its checkpoints/ and plots/ would
    be read as classes (or its images written over) by the next run on that data."""
    for flag, folder in (("--data", cfg.data), ("--val", cfg.val)):
        if folder and Path(folder).expanduser().is_dir():
            how = overlapping(run, Path(folder).expanduser())
            if how:
                raise ValueError(
                    f"--out {run} {how} the {flag} folder {folder}: a run folder must lie apart from "
                    f"the data it reads; pass another --out"
                )


def epochs_logged(run: Path) -> int:
    """The last epoch that metrics.jsonl records as finished (0 when none or no file)."""
    done = 0
    with contextlib.suppress(OSError):
        for line in (run / runs.METRICS_FILE).read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("kind") == "epoch":
                    done = max(done, int(row.get("epoch", 0)))
    return done


def trained_without_checkpoint(run: Path, cfg: TrainConfig) -> bool:
    """A run with trained weights but no checkpoint (its checkpoints/ deleted to free disk) must not start again
    from step 0 over them. True when it is finished for ``cfg`` (nothing to train: the weights are kept);
    a ValueError with what to do when it would need more training, which cannot continue exactly without the
    optimizer's state."""
    done = epochs_logged(run)
    if done and done >= cfg.epochs:
        return True
    trained = f"{done} epoch(s)" if done else "some epochs"
    raise ValueError(
        f"{run / runs.MODEL_FILE} holds trained weights ({trained}) but {run / 'checkpoints'} has no checkpoint "
        f"to continue them exactly, and starting again from step 0 would overwrite them: fine-tune from them with "
        f"`vgg train --init-from {run} --out NEW_RUN`, or move {runs.MODEL_FILE} away to train {run} again"
    )


def broadcast_path(path: Path | None, d: Dist) -> Path:
    """Rank 0's run folder, for every process."""
    if d.world == 1:
        return path
    box = [str(path) if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def _check_same_input(src: Path, cfg: TrainConfig) -> None:
    """--init-from a run: the new run must feed its net the same kind of input (normalisation and pixel range)."""
    source = from_dict(read_toml(src / runs.CONFIG_FILE))  # a run saved before pixel_range reads as [0, 1]
    mine = {"normalize": cfg.normalize, "pixel_range": cfg.pixel_range}
    theirs = {"normalize": source.normalize, "pixel_range": source.pixel_range}
    if mine["normalize"] != theirs["normalize"] or (mine["normalize"] == "mean" and mine != theirs):
        raise ValueError(
            f"--init-from {src}: that run fed its net {theirs} but this one would feed {mine}; the weights expect "
            f"their own input, so pass --normalize {theirs['normalize']} --pixel-range {theirs['pixel_range']}"
        )


def input_for_released_weights(cfg: TrainConfig) -> TrainConfig:
    """--init-from a named source: feed the net what those weights expect (decided before config.toml is
    written, so that a restart and `vgg eval` see it). torchvision's and timm's nets take ImageNet's mean and
    std; the authors' Caffe weights are folded to take RGB [0, 1] pixels minus the authors' mean pixel
    (vggnet.pretrained): ``--normalize caffe`` at pixel range 1."""
    kind = convention(cfg.init_from)
    say = print if is_main() else (lambda *_: None)  # under torchrun, rank 0 speaks for all
    if kind == "imagenet" and cfg.normalize != "imagenet":
        say(f"--init-from {cfg.init_from}: normalising with ImageNet's mean and std, as those weights expect")
        return dataclasses.replace(cfg, normalize="imagenet")
    if kind == "caffe" and (cfg.normalize, cfg.pixel_range) != ("caffe", 1):
        say(f"--init-from {cfg.init_from}: the folded Caffe weights take [0, 1] pixels minus the authors' mean pixel")
        return dataclasses.replace(cfg, normalize="caffe", pixel_range=1)
    return cfg


def init_from(model: nn.Module, source: str, log: Logger, cfg: TrainConfig) -> None:
    """--init-from SOURCE (any form of ``pretrained.WEIGHTS_FORMS``, found by the one resolver, ``resolve_weights``):
    net A's four convs + three FCs into a deeper net (the paper), or the whole net (fine-tuning, through the one
    loader of released weights: any layout).

    A last layer for another number of classes than SOURCE's is new: N(0, 0.01^2) weights and zero bias
    (``VGG.reset_classifier``; the paper's FC init and torchvision's), whatever ``--init`` says: its logits start
    near zero, so the first steps' gradients into the trained layers below are small and do not undo them."""
    src = Path(source).expanduser()
    ours = unwrap(model)
    if runs.is_run(src):
        _check_same_input(src, cfg)
    weights, _ = resolve_weights(source)
    sd, meta = read_state_dict(weights)
    # the net SOURCE holds: our files say it, others (a torchvision-layout .pth) show it in their layers, as
    # finetune.describe_source reads them, so that both agree on what the paper's staged init applies to
    held = (json.loads(meta[ARCH_KEY])["config"], False) if ARCH_KEY in meta else infer_config(sd)
    if held == ("A", False) and ours.arch["config"] != "A":
        copied = init_from_net_a(ours, sd)
        log.line(f"init from net A ({weights}): copied {', '.join(copied)}")
    else:
        log.line(init_from_pretrained(model, source))  # a new last layer gets the fine-tuning head init


def plan_run(config: TrainConfig | dict[str, Any] | None, resume: str | os.PathLike | None, task=None):
    """Which run folder, with which config, from which checkpoint: (cfg, run or None, ckpt, explicit lr, restart).

    ``--resume RUN`` continues the newest valid checkpoint, or starts RUN again from step 0 with its
    config.toml when it has none yet. A new run's command pointing (``--out``) at a folder that already holds a
    run does the same, so one command line restarts a pre-empted job wherever it died. Either way a changed
    key that a resumed run cannot take (see ``config.SAFE_ON_RESUME``) is refused, naming the keys.
    ``task`` (:mod:`.task`; classification when None) reads and resolves its configs.
    """
    rank0 = is_main()
    new_config = task.resolve if task else (lambda c: c if isinstance(c, TrainConfig) else resolve_config(c))
    saved_config, read_config = (task.from_dict, task.read_config) if task else (from_dict, read_run_config)
    command = task.command if task else "vgg train"
    if resume is not None:
        run = Path(resume)
        if not run.is_dir():
            raise FileNotFoundError(f"--resume {run}: no such run folder")
        given = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
        what = "--resume with these options"
    else:
        cfg = new_config(config)
        run = Path(cfg.out) if cfg.out else None
        if run is None or not (run / runs.CONFIG_FILE).is_file():
            return cfg, run, None, False, False
        given = cfg.to_dict()
        what = "this command"
    toml_path = run / runs.CONFIG_FILE
    file_cfg = saved_config(read_config(toml_path)).to_dict() if toml_path.is_file() else None
    found, ckpt = newest_valid_checkpoint(run, rename_bad=rank0)
    if ckpt is not None:
        saved = saved_config(ckpt["config"]).to_dict()
        if file_cfg is not None:  # config.toml edited by hand since the checkpoint: the same rules as flags
            edits = config_changes(saved, file_cfg)
            refuse_unsafe_changes(edits, f"{toml_path} (edited since the checkpoint)", run)
            saved.update({k: new for k, (_, new) in edits.items()})
    elif file_cfg is not None:
        saved = file_cfg
    else:
        raise FileNotFoundError(
            f"{run} holds no run to resume (no config.toml, no checkpoint); start it with `{command} --out {run}`"
        )
    changes = config_changes(saved, given)
    changes.pop("out", None)
    refuse_unsafe_changes(changes, what, run)
    explicit = given if resume is not None else {k: new for k, (_, new) in changes.items()}
    explicit.pop("out", None)
    step = ckpt["global_step"] if ckpt is not None else 0
    if resume is not None and "max_steps" not in given and 0 < saved.get("max_steps", 0) <= step:
        # the suggested `vgg train --resume RUN` after a --max-steps stop must make progress: the limit is spent
        explicit["max_steps"] = 0
        if rank0:
            print(
                f"--max-steps {saved['max_steps']} was reached at step {step}: continuing without a step limit "
                f"(pass --max-steps N to set another)",
                flush=True,
            )
    cfg = saved_config(dict(saved, **explicit, out=str(run)))
    return cfg, run, ckpt, "lr" in explicit, ckpt is None


def named_folder(config: TrainConfig | dict[str, Any] | None, resume) -> Path | None:
    """The run folder a command names (--resume, or --out), before the config is resolved."""
    if resume is not None:
        return Path(resume)
    out = config.out if isinstance(config, TrainConfig) else (config or {}).get("out")
    return Path(out) if out else None


def folder_entries(folder: Path | None) -> set[str] | None:
    """The names in ``folder``; None when it is no folder (then a failed start removes what it made)."""
    return set(os.listdir(folder)) if folder is not None and folder.is_dir() else None


def restore_folder(run: Path, before: set[str] | None, keep: tuple[str, ...] = ()) -> None:
    """Undo a failed start: remove the folder it made, or the entries it added to a folder that was there; the
    files named in ``keep`` stay."""
    kept = {name for name in keep if (run / name).is_file()}
    if before is None and not kept:
        if run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
        return
    for name in set(os.listdir(run)) - (before or set()) - kept if run.is_dir() else ():
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def open_folder(run: Path, cfg: TrainConfig, ckpt) -> None:
    """Rank 0, lock held: clear what a kill left half-done, then write the resolved config."""
    remove_stale_temporaries(run)
    trim_metrics(run, ckpt["global_step"] if ckpt is not None else 0)
    # the resolved config first: a run killed in its statistics pass restarts from it
    atomic_write_text(run / runs.CONFIG_FILE, toml_text(cfg.to_dict()))


__all__ = [
    "broadcast_path",
    "check_out_apart",
    "claim_run_dir",
    "epochs_logged",
    "folder_entries",
    "init_from",
    "input_for_released_weights",
    "named_folder",
    "new_run_dir",
    "open_folder",
    "plan_run",
    "restore_folder",
    "trained_without_checkpoint",
]
