"""The order of the data and the learning rate: which images each process sees at each step, and the paper's
plateau schedule (section 3.1: lr / 10 when the validation error stops improving).

The data order and every image's augmentation come from (seed, epoch, position), never from worker or global
RNG state, so a run resumed mid-epoch sees the same batches as an uninterrupted one, and N processes with batch
B/N each make the same updates as one process with batch B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
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
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}; lower --batch-size")
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


@dataclass
class Plateau:
    """lr /= 10 when the validation top-1 error has not improved by ``threshold`` for more than ``patience``
    epochs, at most ``max_decays`` times; after the last decrease, the next plateau ends training."""

    lr: float
    patience: int
    threshold: float
    max_decays: int
    best: float = math.inf
    bad_epochs: int = 0
    decays: int = 0
    done: bool = False

    @staticmethod
    def improves(error: float, best: float, threshold: float) -> bool:
        """The schedule's rule for progress: ``error`` beats ``best`` by more than ``threshold`` (shared with
        the reproduction report's count of runs still improving)."""
        return error < best - threshold

    def step(self, error: float) -> None:
        if self.improves(error, self.best, self.threshold):
            self.best, self.bad_epochs = error, 0
            return
        self.best = min(self.best, error)
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            if self.decays < self.max_decays:
                self.lr /= 10
                self.decays += 1
                self.bad_epochs = 0
            else:
                self.done = True

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, d: dict[str, Any]) -> None:
        vars(self).update(d)


__all__ = ["BatchPlan", "Plateau"]
