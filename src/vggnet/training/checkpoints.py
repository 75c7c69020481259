"""Checkpoints: the whole state of a run at an optimizer step, written atomically, read back without unpickling.

A checkpoint holds the weights, the optimizer's momentum, the plateau schedule, the config, the position in the
epoch and the RNG states, so that resuming from it gives the same weights as a run that was never stopped. The
newest one that loads is used; a torn file (a full disk, a killed copy) is renamed ``*.unreadable`` and the
previous one tried.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import runs
from ..config import TrainConfig
from ..files import atomic_write, atomic_write_text
from ..weights import unwrap
from .schedule import Plateau


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs (set_rng_state_all would fail): the GPUs this one has
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


def save_checkpoint(
    run: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plateau: Plateau,
    cfg: TrainConfig,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
    keep: int,
    rng: dict[str, Any] | None = None,
    epoch_loss: tuple[float, int] = (0.0, 0),
) -> Path:
    """Write checkpoints/ckpt-<step>.pt atomically, then drop all but the newest ``keep``.

    ``rng``: the RNG states to store (default: the current ones); ``epoch_loss``: (sum, steps) of the training
    loss of the epoch so far, so that a resumed epoch logs the loss of all its steps.
    """
    state = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "plateau": plateau.state_dict(),
        "config": cfg.to_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "rng": rng if rng is not None else rng_state(),
        "epoch_loss": [float(epoch_loss[0]), int(epoch_loss[1])],
    }
    folder = run / "checkpoints"
    path = atomic_write(folder / f"ckpt-{global_step:09d}.pt", lambda tmp: torch.save(state, tmp))
    for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers, strings, lists and dicts; nothing is unpickled
    return torch.load(path, map_location="cpu", weights_only=True)


def newest_valid_checkpoint(run: Path, rename_bad: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of ``run`` that loads, and its contents; (None, None) when there is none.

    A checkpoint that does not load (truncated by a full disk or a killed copy, or refused by
    ``weights_only``) is renamed to ``*.pt.unreadable`` (when ``rename_bad``; kept for inspection, never
    loaded again) and the next older one is tried.
    """
    for path in sorted((run / "checkpoints").glob("ckpt-*.pt"), reverse=True):
        try:
            with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal says enough
                warnings.simplefilter("ignore", UserWarning)
                ckpt = load_checkpoint(path)
            if not isinstance(ckpt, dict) or not {"model", "optimizer", "config", "global_step"} <= set(ckpt):
                raise ValueError("not a vggnet training checkpoint")
            return path, ckpt
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to the previous checkpoint
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            note = ""
            if rename_bad:
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".unreadable"))
                    note = f" (renamed to {path.name}.unreadable)"
            print(
                f"warning: checkpoint {path} is unreadable{note}: {reason}; trying the previous one",
                file=sys.stderr,
                flush=True,
            )
    return None, None


def remove_stale_temporaries(run: Path) -> None:
    """Delete the hidden ``.NAME.XXXX.tmp`` files of writes that a kill interrupted (see ``atomic_write``)."""
    for folder in (run, run / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def trim_metrics(run: Path, global_step: int) -> None:
    """Drop metrics.jsonl rows logged after ``global_step`` (the steps a resumed run does again), and a torn
    last line of a killed write."""
    path = run / runs.METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                f"{path} line {number} is not UTF-8 text (edited or damaged); delete that line and run "
                f"the same command again"
            ) from None
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= global_step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def write_bad_files(run: Path, bad: set[str]) -> None:
    """List the unreadable images a run skipped in RUN/bad_files.txt (none: no file)."""
    if bad:
        atomic_write_text(run / "bad_files.txt", "\n".join(sorted(bad)) + "\n")


__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "newest_valid_checkpoint",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "trim_metrics",
    "write_bad_files",
]
