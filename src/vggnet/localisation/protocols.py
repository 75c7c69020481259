"""The localisation test protocols (Appendix A.2) and OverFeat's greedy merging of boxes.

- ``center``: one centre crop at Q, the box of the ground-truth class (the paper's comparison of the variants,
  its Table 8; with several Q, their boxes are averaged);
- ``dense``: the localisation net applied densely to the whole image rescaled to each Q; every location's box
  (the window at stride 32 that the location sees) is rated by the classification net's soft-max score of the
  class at the same location; the boxes of all scales are merged greedily (:func:`merge_boxes`) class by
  class, and each of the top-5 classes of the classification net (its posteriors averaged over locations and
  scales) gets its best merged box.

A prediction (class, box) is correct when the class is the image's and the box overlaps one of the image's
ground-truth boxes of that class with IoU > 0.5; the top-5 localisation error counts an image as an error when
none of its 5 predictions is correct (ILSVRC); top-1 uses the first prediction only.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import boxes as B
from .. import runs
from ..data.io import BadImageError, load_image
from ..data.transforms import AugParams, EvalTransform, crop_offsets, prepare_images, shape_groups
from ..evaluation.views import average_map, softmax_mean
from ..runtime import pick_device
from .nets import IOU_THRESHOLD, MERGE_IOU, load_loc_run, load_source, select_boxes, stride

CHUNK = 32  # images decoded and run together: batched forward passes, bounded memory


def merge_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float = MERGE_IOU
) -> tuple[torch.Tensor, torch.Tensor]:
    """OverFeat's greedy merging: repeatedly join the two closest boxes until no two are close.

    Two boxes are close when their IoU exceeds ``threshold``; the closest pair (highest IoU) is joined first. A
    joined box is the average of the coordinates of all the boxes it took in, and its score the sum of their
    scores (OverFeat accumulates the class outputs of the windows that predicted it), so a box that many windows
    agree on outranks a lone confident one. Returns the merged (K, 4) boxes and scores, best first.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    sums = boxes.double().clone()  # coordinate sums of each cluster
    counts = torch.ones(len(boxes), dtype=torch.float64)
    total = scores.double().clone()
    alive = torch.ones(len(boxes), dtype=torch.bool)
    mean = sums / counts[:, None]
    overlap = B.iou(mean, mean)
    overlap.fill_diagonal_(-1)
    while True:
        masked = overlap.masked_fill(~(alive[:, None] & alive[None, :]), -1)
        best = int(masked.argmax())
        i, j = divmod(best, len(boxes))
        if masked[i, j] <= threshold:
            break
        sums[i] += sums[j]
        counts[i] += counts[j]
        total[i] += total[j]
        alive[j] = False
        mean[i] = sums[i] / counts[i]
        row = B.iou(mean[i : i + 1], mean)[0]
        row[i] = -1
        overlap[i], overlap[:, i] = row, row
    keep = alive.nonzero()[:, 0]
    order = total[keep].argsort(descending=True)
    keep = keep[order]
    return mean[keep].float(), total[keep].float()


def window_boxes(box_map: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """(4, h, w) box parameters of a dense map (fractions of each location's window) -> (h, w, 4) xyxy boxes in
    the input's pixels: location (i, j) sees the window at (stride * i, stride * j)."""
    _, h, w = box_map.shape
    b = B.to_xyxy(box_map.permute(1, 2, 0).float() * crop)
    ys = torch.arange(h, dtype=b.dtype)[:, None] * stride
    xs = torch.arange(w, dtype=b.dtype)[None, :] * stride
    return b + torch.stack([xs.expand(h, w), ys.expand(h, w), xs.expand(h, w), ys.expand(h, w)], -1)


@dataclass
class LocResult:
    """The localisation errors of one (run, protocol, scales), over ``images`` images."""

    run: str
    regression: str
    finetune: str
    protocol: str
    scales: list[int]
    images: int
    top1_loc_err: float
    top5_loc_err: float
    top1_cls_err: float | None = None  # the classification net's own error (dense protocol)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Setup:
    """What both protocols need: the nets (each with its input convention) and the test scales."""

    loc: runs.Run
    cls: runs.Run | None  # the classification net that rates the boxes (dense only)
    regression: str
    crop: int
    scales: list[int]
    device: torch.device
    stride: int  # of the dense maps, in input pixels


def _center_hits(s: _Setup, chunk: list[tuple[B.BoxSample, torch.Tensor]]) -> list[bool]:
    """Per image: whether the centre crop's box of the true class (averaged over Q) is right."""
    found: list[list[torch.Tensor]] = [[] for _ in chunk]
    labels = torch.tensor([smp.label for smp, _ in chunk], device=s.device)
    for q in s.scales:
        tf = EvalTransform(s.loc.stats, size=q, crop_size=s.crop, convention=s.loc.convention)
        x = torch.stack([tf.apply(img, tf.sample()) for _, img in chunk]).to(s.device)
        pred = select_boxes(s.loc.model(x), labels, s.regression).cpu().float()
        for k, (_, img) in enumerate(chunk):
            h, w = img.shape[-2:]
            nh, nw, top, left = crop_offsets(h, w, AugParams(q), s.crop)
            box = B.to_xyxy(pred[k] * s.crop) + torch.tensor([left, top, left, top], dtype=torch.float32)
            found[k].append(B.rescale_boxes(box[None], (nh, nw), (h, w)))
    hits = []
    for k, (smp, _) in enumerate(chunk):
        box = torch.cat(found[k]).mean(0, keepdim=True)  # several Q: their boxes averaged, in the image's pixels
        hits.append(bool((B.iou(box, smp.boxes) > IOU_THRESHOLD).any()))
    return hits


def _dense_maps(s: _Setup, chunk: list[tuple[B.BoxSample, torch.Tensor]]) -> list[list[tuple]]:
    """Per image, per Q: (class posterior map (C, h, w), box map (4 or 4C, h, w), the rescaled size, the image's
    class posterior (C,))."""
    maps: list[list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]] = [[] for _ in chunk]
    images = [img.to(s.device) for _, img in chunk]
    for q in s.scales:
        # each net's input as `vgg eval` feeds it (evaluation's preprocessing, each run's own convention)
        xs_cls = prepare_images(images, q, s.cls.convention)
        xs_loc = xs_cls if s.loc.convention == s.cls.convention else prepare_images(images, q, s.loc.convention)
        for idx in shape_groups(xs_cls).values():  # images of one rescaled size run as one batch
            x = torch.stack([xs_cls[k] for k in idx])
            logits = s.cls.model.dense(x).float()  # (B, C, h, w)
            scores = F.softmax(logits, 1).cpu()  # each location's class posterior: the boxes' scores
            # the image's class posterior as `vgg eval` computes it: evaluation's dense average of the same map
            # (the windows that lie on the image), then the soft-max
            posterior = softmax_mean(average_map(s.cls.model, logits, tuple(x.shape[-2:]))[:, None]).cpu()
            box_map = s.loc.model.dense(torch.stack([xs_loc[k] for k in idx])).float().cpu()  # (B, 4 or 4C, h, w)
            for j, k in enumerate(idx):
                maps[k].append((scores[j], box_map[j], tuple(x.shape[-2:]), posterior[j]))
    return maps


def _dense_hits(
    s: _Setup, smp: B.BoxSample, size: tuple[int, int], maps: list[tuple], merge_iou: float
) -> tuple[bool, bool, bool]:
    """(top-1 right, any of the top-5 right, top-1 class right) of one image from its dense maps."""
    h, w = size
    all_boxes, all_scores, posteriors = [], [], []
    for scores, box_map, (nh, nw), posterior in maps:
        posteriors.append(posterior)
        c = scores.shape[0]
        if s.regression == "scr":
            wb = window_boxes(box_map, s.crop, s.stride)  # (h, w, 4)
            per_class = wb[None].expand(c, *wb.shape)
        else:
            per_class = torch.stack([window_boxes(box_map[4 * i : 4 * i + 4], s.crop, s.stride) for i in range(c)])
        per_class = B.rescale_boxes(per_class, (nh, nw), (h, w))  # back to the image's pixels
        all_boxes.append(per_class.flatten(1, 2))  # (C, h*w, 4)
        all_scores.append(scores.flatten(1))  # (C, h*w)
    boxes_c, scores_c = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
    ranked = torch.stack(posteriors).mean(0).argsort(descending=True)[:5].tolist()
    correct = []
    for c in ranked:
        merged, _ = merge_boxes(boxes_c[c], scores_c[c], merge_iou)
        correct.append(c == smp.label and bool((B.iou(merged[:1], smp.boxes) > IOU_THRESHOLD).any()))
    return correct[0], any(correct), ranked[0] == smp.label


def _classifier(
    path: str | os.PathLike, device: torch.device, num_classes: int, normalize: str | None = None
) -> runs.Run:
    """The classification net that rates the dense protocol's boxes (a run folder or weights of any SOURCE form);
    it must know the data's classes."""
    cls = load_source(path, device, normalize)
    if cls.model.num_classes != num_classes:
        raise ValueError(
            f"the classification net {cls.path} has {cls.model.num_classes} classes, the data "
            f"{num_classes}; pass the run the localisation net was made from (--classifier)"
        )
    cls.model.eval()
    return cls


def _decode(samples: list[B.BoxSample]) -> list[tuple[B.BoxSample, torch.Tensor]]:
    chunk = []
    for smp in samples:
        with contextlib.suppress(BadImageError):  # an unreadable image is left out of the count
            chunk.append((smp, load_image(smp.path)))
    return chunk


@torch.inference_mode()
def evaluate_localisation(
    loc_run: str | os.PathLike,
    protocol: str = "dense",
    scales: list[int] | None = None,
    classifier: str | os.PathLike | None = None,
    data: str | None = None,
    max_per_class: int = 0,
    boxes_csv: str | None = None,
    device: str = "auto",
    merge_iou: float = MERGE_IOU,
) -> LocResult:
    """Localisation errors of a localisation run on the validation images with boxes (module doc)."""
    if protocol not in ("center", "dense"):
        raise ValueError(f"unknown localisation protocol {protocol!r}; use center or dense")
    dev = pick_device(device)
    loc, info = load_loc_run(loc_run, dev)
    crop = loc.model.crop_size
    scales = list(scales or [int(info["scale"])])
    if min(scales) < crop:
        raise ValueError(f"test scales {scales} must be >= the crop size {crop}")
    report = B.BoxReport()
    samples, classes = B.box_samples(data or info["data"], "val", boxes_csv, max_per_class, report)
    if not samples:
        raise ValueError(f"{data or info['data']}: no validation images with boxes ({report.summary()})")
    # the net the localisation net was made from, with the convention it was given (--from weights that carry none)
    path, normalize = (classifier, None) if classifier else (info["from_run"], info.get("source_normalize") or None)
    cls = _classifier(path, dev, len(classes), normalize) if protocol == "dense" else None
    loc.model.eval()
    s = _Setup(loc, cls, info["regression"], crop, scales, dev, stride(loc.model))
    t0 = time.perf_counter()
    top1 = top5 = cls_right = n = 0
    for first in range(0, len(samples), CHUNK):
        chunk = _decode(samples[first : first + CHUNK])
        if not chunk:
            continue
        if protocol == "center":
            hits = _center_hits(s, chunk)
            top1, top5, n = top1 + sum(hits), top5 + sum(hits), n + len(hits)
            continue
        for (smp, img), maps in zip(chunk, _dense_maps(s, chunk)):
            right1, right5, class_right = _dense_hits(s, smp, tuple(img.shape[-2:]), maps, merge_iou)
            top1, top5, cls_right, n = top1 + right1, top5 + right5, cls_right + class_right, n + 1
    n = max(n, 1)
    return LocResult(
        run=str(loc_run),
        regression=s.regression,
        finetune=info.get("finetune", "?"),
        protocol=protocol,
        scales=scales,
        images=n,
        top1_loc_err=1 - top1 / n,
        top5_loc_err=1 - top5 / n,
        top1_cls_err=(1 - cls_right / n) if protocol == "dense" else None,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["LocResult", "evaluate_localisation", "merge_boxes", "window_boxes"]
