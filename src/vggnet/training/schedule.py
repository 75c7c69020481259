"""The order of the data and the learning rate: which images each process sees at each step, and the paper's
plateau schedule (section 3.1: lr / 10 when the validation error stops improving).

The data order and every image's augmentation come from (seed, epoch, position), never from worker or global
RNG state, so a run resumed mid-epoch sees the same batches as an uninterrupted one, and N processes with batch
B/N each make the same updates as one process with batch B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.dataset import epoch_keys


class BatchPlan:
    """Yields the micro-batches of one epoch for one process: lists of (index, augmentation seed).

    The global order is a permutation drawn from (seed, epoch). Each global batch of ``batch_size`` images
    is cut into ``world`` equal shares, and a process's share into ``accum`` micro-batches. The last
    incomplete global batch is dropped (fixed batch size, as in the paper). ``start_step`` skips the first
    optimizer steps of the epoch (resume).
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, accum: int, seed: int) -> None:
        if batch_size % (world * accum):
            raise ValueError(f"batch_size {batch_size} is not divisible by processes x accum_steps = {world * accum}")
        if n < batch_size:
            raise ValueError(
                f"the training set has {n} images, fewer than one batch of {batch_size}; lower --batch-size"
            )
        self.n, self.batch_size, self.world, self.rank, self.accum, self.seed = n, batch_size, world, rank, accum, seed
        self.micro = batch_size // (world * accum)
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, seeds = epoch_keys(self.n, self.seed, self.epoch)
        share = self.batch_size // self.world
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.batch_size + self.rank * share
            for a in range(self.accum):
                idx = range(lo + a * self.micro, lo + (a + 1) * self.micro)
                yield [(order[i], seeds[i]) for i in idx]


# ---- the plateau schedule ---------------------------------------------------------------------------------

PLATEAU_RULES = ("trend", "best")


def window_trend(errors: Sequence[float]) -> float:
    """The change of the validation error across ``errors`` (consecutive epochs) by their least-squares line:
    slope x (len - 1). Negative: the error falls. Every epoch weighs in, so one noisy epoch moves it by at most
    a fraction of its own deviation, where a comparison with the best epoch so far takes the noise at face value."""
    n = len(errors)
    if n < 2:
        return 0.0
    mid = (n - 1) / 2
    mean = sum(errors) / n
    sxx = sum((t - mid) ** 2 for t in range(n))
    slope = sum((t - mid) * (e - mean) for t, e in enumerate(errors)) / sxx
    return slope * (n - 1)


@dataclass
class Plateau:
    """lr /= 10 when the validation top-1 error has stopped improving, at most ``max_decays`` times; after the
    last decrease, the next plateau ends training (the paper's schedule, section 3.1).

    "Stopped improving" is decided by ``rule``:

    - ``trend`` (the default): the least-squares line through the last ``window`` epochs' errors at the current
      learning rate does not fall by more than ``threshold`` across them. The window never spans a decrease;
      each learning rate gets at least ``window`` epochs. docs/plateau.md has the design and its measurements:
      at 1,000 validation images it fires on a true plateau as often as the old rule with patience 2, and on a
      noisy descent of 1 point an epoch less than half as often.
    - ``best``: the error has not beaten the best so far by more than ``threshold`` for more than ``patience``
      epochs (vggnet's rule before issue 21; with patience 1 it fires on one noisy epoch).
    """

    lr: float
    patience: int
    threshold: float
    max_decays: int
    rule: str = "trend"
    window: int = 5
    best: float = math.inf
    bad_epochs: int = 0
    decays: int = 0
    done: bool = False
    at_lr: list[float] = field(default_factory=list)  # the errors since the last decrease (trend rule)

    def __post_init__(self) -> None:
        if self.rule not in PLATEAU_RULES:
            raise ValueError(f"unknown plateau rule {self.rule!r}; use one of {', '.join(PLATEAU_RULES)}")
        if self.window < 2:
            raise ValueError(f"--lr-window must be at least 2 epochs, got {self.window}")

    @staticmethod
    def improves(error: float, best: float, threshold: float) -> bool:
        """The ``best`` rule's progress: ``error`` beats ``best`` by more than ``threshold``."""
        return error < best - threshold

    @staticmethod
    def trending_down(errors: Sequence[float], threshold: float) -> bool:
        """The ``trend`` rule's progress: the fitted line through ``errors`` falls by more than ``threshold``."""
        return window_trend(errors) < -threshold

    def improving(self) -> bool:
        """Whether the schedule counts the run as still improving after the epochs it has seen."""
        if self.rule == "best":
            return self.bad_epochs == 0
        w = self.at_lr[-self.window :]
        return len(w) < self.window or self.trending_down(w, self.threshold)

    def step(self, error: float) -> None:
        if self.rule == "best":
            if self.improves(error, self.best, self.threshold):
                self.best, self.bad_epochs = error, 0
                return
            self.bad_epochs += 1
            plateau = self.bad_epochs > self.patience
        else:
            self.at_lr.append(error)
            del self.at_lr[: -self.window]
            plateau = not self.improving()
        self.best = min(self.best, error)
        if not plateau:
            return
        if self.decays < self.max_decays:
            self.lr /= 10
            self.decays += 1
            self.bad_epochs = 0
            self.at_lr = []
        else:
            self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        vars(self).update(d)


__all__ = ["BatchPlan", "PLATEAU_RULES", "Plateau", "window_trend"]
