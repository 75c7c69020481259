"""Training: the paper's recipe (section 3.1) on one CPU, one GPU, or many through DDP.

- :mod:`.run`: ``train(config)``, the epoch loop and its stop signals;
- :mod:`.setup`: where a run starts: its folder, config, checkpoint and ``--init-from`` weights;
- :mod:`.finetune`: what ``--init-from``'s source decides (net, input, the fine-tuning preset), ``--freeze``,
  ``--head-lr-mult``;
- :mod:`.loop`: one epoch of SGD (gradient accumulation, padded micro-batches) and one validation pass;
- :mod:`.schedule`: the batch plan (which images each process sees at each step) and the plateau schedule;
- :mod:`.checkpoints`: checkpoints written atomically, the newest valid one found on resume;
- :mod:`.loaders`: the data sets, statistics and loaders of both data paths (CPU workers, GPU nvJPEG);
- :mod:`.progress`: metrics.jsonl, console lines, the tqdm bar, and the loss read without a host sync.

Exactness: the data order and every image's augmentation come from (seed, epoch, position), never from
worker or global RNG state, and a checkpoint stores the position inside the epoch with the optimizer,
schedule and RNG states; so a run resumed mid-epoch ends with the same weights as an uninterrupted one,
and N processes with batch B/N each make the same updates as one process with batch B.
"""

from __future__ import annotations

from .checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    newest_valid_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .finetune import freeze, resolve_config
from .loaders import (
    build_data,
    check_loader_memory,
    fallback_note,
    make_loader,
    make_train_loader,
    make_val_loader,
    pick_loader,
)
from .loop import NonFiniteLoss, pad_batch, setup_backends, train_one_epoch, validate
from .progress import HostCopy, Logger, Progress
from .run import Interrupted, train
from .schedule import BatchPlan, Plateau
from .setup import new_run_dir, plan_run

__all__ = [
    "BatchPlan",
    "HostCopy",
    "Interrupted",
    "Logger",
    "NonFiniteLoss",
    "Plateau",
    "Progress",
    "build_data",
    "check_loader_memory",
    "fallback_note",
    "freeze",
    "latest_checkpoint",
    "load_checkpoint",
    "make_loader",
    "make_train_loader",
    "make_val_loader",
    "new_run_dir",
    "newest_valid_checkpoint",
    "pad_batch",
    "pick_loader",
    "plan_run",
    "resolve_config",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "setup_backends",
    "train",
    "train_one_epoch",
    "validate",
]
