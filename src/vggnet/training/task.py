"""What the training engine trains: a task plugs its config, data, net, loss and validation into the one engine
(:func:`~vggnet.training.train`), which owns everything else: the run folder and its lock, resume from the newest
valid checkpoint (RNG states included), the batch plan, the epoch loop, progress lines, DDP and the plateau
schedule.

:class:`Classification` (the paper's section 3.1) is the default task; localisation (Appendix A) is another
(:class:`vggnet.localisation.training.Localisation`). A batch is ``(images, targets, bad files)``: the engine pads
and moves it and calls :meth:`Classification.loss` on the net's output; ``targets`` is whatever the task's
collate makes of its items (class labels here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from .. import runs
from ..config import TrainConfig, from_dict, read_run_config
from ..convention import Convention
from ..data import Stats, collate
from ..factory import create_model
from ..files import atomic_write_text
from ..pretrained import make_cfg, resolve_weights
from ..runtime import Dist
from .finetune import freeze, resolve_config
from .loaders import build_data
from .loop import cross_entropy_loss, validate
from .progress import Logger
from .schedule import BatchPlan
from .setup import init_from


class Classification:
    """Image classification with the soft-max loss: `vgg train`."""

    command = "vgg train"  # the command a message tells the user to run again (``--resume RUN``)
    metric = "val_top1_err"  # the validation error the plateau schedule steps on
    collate = staticmethod(collate)  # items -> (images, targets, bad files)
    failure_files: tuple[str, ...] = ()  # files a failed start keeps (it removes all else it wrote)
    runs_root = Path("runs")  # where a run without --out gets the next numbered folder

    def resolve(self, config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
        """A new run's config from what the caller gave (a dict: with --init-from's source and the fine-tuning
        preset, :func:`.finetune.resolve_config`)."""
        return config if isinstance(config, TrainConfig) else resolve_config(config)

    def from_dict(self, d: dict[str, Any]) -> TrainConfig:
        """A saved config (config.toml or a checkpoint's) read back."""
        return from_dict(d)

    def read_config(self, path: Path) -> dict[str, Any]:
        return read_run_config(path)

    def build_data(self, cfg: TrainConfig, d: Dist, stats: Stats | None, run: Path):
        """(train set, val set, class names, statistics) of the run in folder ``run``; ``stats`` given on resume."""
        return build_data(cfg, d, stats)

    def plan(self, cfg: TrainConfig, n: int, d: Dist) -> BatchPlan:
        return BatchPlan(n, cfg.batch_size, d.world, d.rank, cfg.accum_steps, cfg.seed)

    def make_model(
        self, cfg: TrainConfig, classes: list[str], stats: Stats, run: Path, d: Dist, log: Logger, fresh: bool
    ) -> nn.Module:
        """The net of the config, initialised (``--init``, or ``--init-from`` for a fresh run), carrying the input
        convention it trains with: `vgg eval --weights` and create_model(pretrained=...) then need no run folder."""
        model = create_model(
            cfg.arch,
            num_classes=len(classes),
            width=cfg.width,
            fc_width=cfg.fc_width,
            crop_size=cfg.crop_size,
            dropout=cfg.dropout,
            batch_norm=cfg.batch_norm or None,  # None: as the name says (vgg16_bn)
            init=cfg.init,
            seed=cfg.seed,
        )
        if cfg.init_from and fresh:
            if d.world > 1 and not Path(cfg.init_from).exists():
                # a download: rank 0 fetches it first, so that ranks sharing its cache read that file rather than
                # all downloading at once (downloads are atomic either way)
                if d.main:
                    resolve_weights(cfg.init_from)
                dist.barrier()
            init_from(model, cfg.init_from, log, cfg)
        frozen = freeze(model, cfg.freeze)  # a resumed run too: the checkpoint's weights load into the same modules
        if frozen:
            log.line(
                f"--freeze {cfg.freeze}: {frozen[0]} ... {frozen[-1]} frozen ({len(frozen)} modules), "
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters train"
            )
        model.pretrained_cfg = make_cfg(
            Convention.of_run(stats, cfg.normalize, cfg.pixel_range),
            source=str(run),
            num_classes=len(classes),
            classes=list(classes),
            resize=(cfg.scale_min + cfg.scale_max) // 2,
            crop=cfg.crop_size,
        )
        return model

    def write_files(self, run: Path, cfg: TrainConfig, classes: list[str], stats: Stats) -> None:
        """The files a new run writes beside config.toml once its data are known (rank 0)."""
        stats.save(run / runs.STATS_FILE)
        atomic_write_text(run / runs.CLASSES_FILE, json.dumps(classes))

    def train_mode(self, model: nn.Module, cfg: TrainConfig) -> None:
        """Put the training step's module (compiled, DDP-wrapped) in training mode, as the task means it."""
        model.train()

    # the training loss of a batch: (output, targets, cfg, reduction) -> the mean, or one per image ("none")
    loss = staticmethod(cross_entropy_loss)

    def validate(
        self, model, dataset, cfg: TrainConfig, device, autocast, d: Dist, bad_files: set[str], loader=None
    ) -> dict[str, float]:
        return validate(model, dataset, cfg, device, autocast, d, bad_files, loader)

    def epoch_text(self, metrics: dict[str, float]) -> str:
        return f"val top-1 err {metrics['val_top1_err']:.2%}"


CLASSIFICATION = Classification()

__all__ = ["CLASSIFICATION", "Classification"]
