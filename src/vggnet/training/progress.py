"""What a run tells its user while it trains: metrics.jsonl, console lines, a progress bar (tqdm) on a terminal,
TensorBoard; and :class:`HostCopy`, which reads the loss for the bar without waiting for the GPU.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import runs


@dataclass
class Progress:
    """Where a run is: epoch, step inside it, optimizer steps in all, and the epoch's loss so far."""

    epoch: int
    step_in_epoch: int
    global_step: int
    epoch_loss_sum: float = 0.0  # the training loss summed over the epoch's steps so far (across a resume)
    epoch_loss_steps: int = 0


class HostCopy:
    """The latest value of a device scalar on the host, copied without a host synchronisation.

    :meth:`request` queues an asynchronous copy into pinned memory behind the work already on the stream;
    :meth:`poll` returns the newest copy that has completed (NaN before the first), never waiting for the
    device. On the CPU the copy completes at once. The training loop's progress line reads the loss this way.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=self.cuda)
        self.view = self.host.numpy()  # shares the host tensor's memory: reading it is no tensor operation
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending = False
        self.value = math.nan

    def request(self, t: torch.Tensor) -> None:
        self.poll()
        if self.pending:
            return  # the previous copy is still in flight: it will do
        self.host.copy_(t.detach(), non_blocking=True)
        if self.cuda:
            self.event.record()
            self.pending = True
        else:
            self.value = float(self.view)

    def poll(self) -> float:
        if self.pending and self.event.query():
            self.value, self.pending = float(self.view), False
        return self.value


def progress_text(prog: Progress, total: int, loss: float, lr: float, ips: float, eta: float) -> str:
    """The progress of an epoch as one line (a log file's view of the progress bar)."""
    return (
        f"epoch {prog.epoch + 1} step {prog.step_in_epoch}/{total} loss {loss:.4f} lr {lr:.2e} "
        f"{ips:,.0f} img/s ETA {eta:.0f}s"
    )


class Logger:
    """metrics.jsonl, console lines, a tqdm progress bar on a terminal, TensorBoard when installed; rank 0 only.

    The bar is redrawn only when the loop calls :meth:`progress` (at log steps, and about once a second on a
    terminal from a loss copied without a host synchronisation), never by tqdm per step.
    """

    def __init__(self, run: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self.bar: tqdm | None = None
        self.bar_epoch = -1
        self.file = open(run / runs.METRICS_FILE, "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:  # TensorBoard is optional: without it, no event files, and the run says so once
                from torch.utils.tensorboard import SummaryWriter  # deliberate lazy import: heavy and optional

                self.tb = SummaryWriter(str(run / "tensorboard"))
            except ImportError:  # said at the first record, so that a run that fails to start says only why
                self.tb_missing = True

    tb_missing = False

    def record(self, kind: str, **values: Any) -> None:
        if not self.enabled:
            return
        if self.tb_missing:
            self.tb_missing = False
            print(
                "--tensorboard: tensorboard is not installed (pip install vggnet[tensorboard]), so no event files; "
                "the metrics are in metrics.jsonl (--no-tensorboard silences this)",
                file=sys.stderr,
            )
        self.file.write(json.dumps({"kind": kind, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, values.get("step", 0))

    def progress(self, prog: Progress, total: int, loss: float, lr: float, ips: float, eta: float) -> None:
        """Where the epoch is: a tqdm bar on a terminal (steps, rate, ETA, loss, lr, images/s), else a line."""
        if not self.enabled:
            return
        if not self.tty:
            print(progress_text(prog, total, loss, lr, ips, eta), flush=True)
            return
        if self.bar is None or self.bar_epoch != prog.epoch:
            self._close_bar()
            self.bar = tqdm(
                total=total,
                initial=prog.step_in_epoch,
                desc=f"epoch {prog.epoch + 1}",
                unit="step",
                file=sys.stdout,
                dynamic_ncols=True,
                leave=True,
                mininterval=0,
            )
            self.bar_epoch = prog.epoch
        self.bar.n = prog.step_in_epoch
        self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {ips:,.0f} img/s", refresh=False)
        self.bar.refresh()

    def line(self, text: str) -> None:
        """Print a log line (below a finished progress bar)."""
        if not self.enabled:
            return
        self._close_bar()
        print(text, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.bar_epoch = None, -1

    def close(self) -> None:
        self._close_bar()
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


__all__ = ["HostCopy", "Logger", "Progress", "progress_text"]
