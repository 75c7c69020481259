"""Prediction: the top classes of images with their posteriors (by default dense, multi-scale, with flips)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.folders import imagenet_wnids
from ..data.io import Source
from ..metrics import effective_k
from ..pretrained import imagenet_classes
from ..resources import fit_eval_batch
from ..runtime import runtime
from .driver import DEFAULT_BATCH_SIZE, Timer, eval_mode, stream
from .nets import FUSED, as_nets
from .protocols import parse_protocols, plan_scales


@dataclass
class Prediction:
    """The top classes of one image: labels, class names and posteriors, best first."""

    image: str
    labels: list[int]
    names: list[str]
    probs: list[float]
    precision: str = "float32"  # what the nets computed in: "bf16" (autocast) or "float32"
    wnids: list[str] | None = None  # ImageNet's WordNet ids of the classes, for nets of ImageNet's 1,000 classes

    def to_dict(self) -> dict[str, Any]:
        top = [{"label": i, "class": c, "prob": p} for i, c, p in zip(self.labels, self.names, self.probs)]
        for t, w in zip(top, self.wnids or []):
            t["wnid"] = w
        return {"image": self.image, "top": top, "precision": self.precision}


def predict(
    nets: Any,
    images: Source | Sequence[Source],
    top: int = 5,
    protocol: str = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    amp: bool | None = None,
    skipped: list[str] | None = None,
) -> list[Prediction]:
    """The ``top`` classes of each image with their posteriors; by default dense, multi-scale, with flips.

    ``nets``: a model, a Run, a run folder or a list (fused). ``images``: a path, a uint8 tensor, or a list of
    them. An unreadable file is an error here (unlike ``evaluate``, which skips it), unless a list is passed as
    ``skipped``: the file is then named there and left out of the result (`vgg predict` does this). ``amp``: as
    for ``evaluate`` (None: bf16 on CUDA and on a CPU with native bf16; False: float32); each prediction records
    its precision.
    """
    rt = runtime(device, amp)
    net_list = as_nets(nets, mean=mean, std=std, classes=classes)
    (protocol,) = parse_protocols([protocol])
    single = isinstance(images, (str, os.PathLike, torch.Tensor, np.ndarray)) or hasattr(images, "convert")
    image_list = [images] if single else list(images)  # type: ignore[list-item]
    names = net_list[0].classes or [str(i) for i in range(net_list[0].num_classes)]
    wnids = imagenet_wnids() if names == imagenet_classes() else None  # the released nets' labels
    if names == imagenet_wnids():  # a run trained on ImageNet's folders: its classes are the ids; add the names
        names, wnids = imagenet_classes(), names
    plans = plan_scales(net_list, [protocol], scales)
    # shrunk or refused before any work, as in evaluate
    bs = fit_eval_batch([n.model for n in net_list], plans, batch_size or DEFAULT_BATCH_SIZE, rt.device)
    k = effective_k(top, net_list[0].num_classes)
    preds: list[Prediction | None] = [None] * len(image_list)
    items = [(src, 0) for src in image_list]
    row = FUSED if len(net_list) > 1 else net_list[0].name
    with eval_mode([n.model for n in net_list], rt), torch.inference_mode():
        for idx, _, out, bad in stream(net_list, items, plans, flip, bs, rt, 0, Timer(rt)):
            if bad and skipped is None:
                raise ValueError(f"cannot read image {bad[0]}")
            if skipped is not None:
                skipped.extend(str(b) for b in bad)
            if not len(idx):
                continue
            p, lab = out[row][protocol].float().cpu().topk(k, dim=1)
            for i, pi, li in zip(idx, p.tolist(), lab.tolist()):
                src = image_list[i]
                label = str(src) if isinstance(src, (str, os.PathLike)) else f"image {i}"
                preds[i] = Prediction(
                    label, li, [names[j] for j in li], pi, rt.precision, [wnids[j] for j in li] if wnids else None
                )
    return [p for p in preds if p is not None]


__all__ = ["Prediction", "predict"]
