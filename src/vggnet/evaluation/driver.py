"""The evaluation driver: decode images, run every net's views at every test scale, average, count errors.

Posteriors are averaged level by level, each level with equal weights: over the flips and crops of one scale
(``views``), then over scales, then over the kinds of a combined protocol (dense and multi-crop count equally,
not 6 dense views against 150 crops), then over nets (fusion). That is, every protocol is a weighted average
of the soft-max of its views.

Efficiency: images are decoded by a DataLoader (workers on CUDA by default; an unreadable image is skipped,
counted and named in the report) in chunks of several batches; a chunk goes to the device once and is rescaled
there to each Q; for dense evaluation images are grouped by their rescaled shape and each group runs as batches
(exact, no padding); crops of several images are batched together whatever the images' shapes. Everything
runs under ``torch.inference_mode`` with channels-last inputs, under bf16 autocast on CUDA and on a CPU with native
bf16 (float32 with ``amp=False``), decided once (``vggnet.runtime``).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..data.dataset import DecodedImages
from ..data.io import to_image
from ..data.transforms import prepare_images
from ..metrics import TopKErrors, confusion_matrix, effective_k, top1_predictions
from ..report import provenance
from ..resources import fit_eval_batch
from ..runtime import Runtime, runtime
from .nets import FUSED, Net, as_nets
from .protocols import PROTOCOLS, max_scale, parse_protocols, plan_scales
from .results import EvalResult, ProtocolResult
from .samples import EvalSample, eval_samples
from .views import VIEW_KINDS

# Views per forward pass (whole images for dense, crops for multi-crop) unless the caller says: one number on
# CUDA and on the CPU alike (the value evaluation has always used; the device does not change it).
DEFAULT_BATCH_SIZE = 256
Plan = dict[str, list[int]]  # protocol -> its test scales Q, for one net


class Timer:
    """Seconds spent per key, with the GPU synchronised at both ends so that each key gets its own work."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.seconds: dict[Any, float] = defaultdict(float)

    @contextmanager
    def __call__(self, key: Any) -> Iterator[None]:
        self.rt.sync()
        t0 = time.perf_counter()
        yield
        self.rt.sync()
        self.seconds[key] += time.perf_counter() - t0


def net_posteriors(
    net: Net,
    images: Sequence[torch.Tensor],
    plan: Plan,
    flip: bool = True,
    batch_size: int = 32,
    rt: Runtime | None = None,
    timer: Timer | None = None,
) -> dict[str, torch.Tensor]:
    """One net's posteriors (N, C) for each protocol of ``plan`` (protocol -> its test scales Q).

    Each (kind, Q) is computed once and shared: dense at Q=384 serves both "dense" and "dense+multicrop".
    Timings go to ``timer`` under (net name, "rescale" or kind, Q).
    """
    rt = rt or runtime("cpu")
    timer = timer or Timer(rt)
    # on the device once for all scales (a no-op when the caller moved them)
    images = [img.to(rt.device, non_blocking=True) for img in images]
    kinds_at: dict[int, set[str]] = defaultdict(set)
    for protocol, qs in plan.items():
        for q in qs:
            kinds_at[q].update(PROTOCOLS[protocol])
    parts: dict[tuple[str, int], torch.Tensor] = {}
    for q in sorted(kinds_at):
        with timer((net.name, "rescale", q)):
            xs = prepare_images(images, q, net.convention)
        for kind in sorted(kinds_at[q]):
            with timer((net.name, kind, q)):
                parts[(kind, q)] = VIEW_KINDS[kind](net.model, xs, flip, batch_size, rt)
        del xs
    return {
        p: torch.stack([torch.stack([parts[(k, q)] for q in qs]).mean(0) for k in PROTOCOLS[p]]).mean(0)
        for p, qs in plan.items()
    }


@contextmanager
def eval_mode(models: Sequence[nn.Module], rt: Runtime) -> Iterator[None]:
    """Models on the device in eval mode; their training flags are restored afterwards (not their device).

    Entered before ``torch.inference_mode``: a move or a channels-last copy made inside it would turn the
    weights into inference tensors, and the caller's net could no longer be trained or run with autograd."""
    training = [m.training for m in models]
    for m in models:
        rt.prepare(m)
    try:
        yield
    finally:
        for m, t in zip(models, training):
            m.train(t)


def posteriors(
    models: Any,
    image: Any,
    protocol: str = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    amp: bool | None = None,
) -> torch.Tensor:
    """The soft-max posteriors (classes,) of one image under one protocol, fused over ``models``.

    ``models``: a VGG model, a Run, a run folder, or a list of them (fusion: their posteriors are averaged);
    models are moved to ``device``. ``image``: a file path or a uint8 (3, H, W) tensor. ``scales``: see
    ``resolve_scales``. ``amp``: as for ``evaluate``. Returned on the CPU.
    """
    rt = runtime(device, amp)
    nets = as_nets(models, mean=mean, std=std)
    (protocol,) = parse_protocols([protocol])
    plans = plan_scales(nets, [protocol], scales)
    bs = fit_eval_batch([n.model for n in nets], plans, batch_size or DEFAULT_BATCH_SIZE, rt.device)  # before any work
    img = to_image(image, max_scale(plans))
    out = []
    with eval_mode([n.model for n in nets], rt), torch.inference_mode():
        for net, plan in zip(nets, plans):
            out.append(net_posteriors(net, [img], plan, flip, bs, rt)[protocol][0])
    return torch.stack(out).mean(0).cpu()


Chunk = tuple[list[int], torch.Tensor, dict[str, dict[str, torch.Tensor]], list[str]]


def stream(
    nets: Sequence[Net],
    items: Sequence[EvalSample],
    plans: Sequence[Plan],
    flip: bool,
    batch_size: int,
    rt: Runtime,
    workers: int,
    timer: Timer,
    log: Callable[[int, int], None] | None = None,
) -> Iterator[Chunk]:
    """Per chunk of decoded images: (sample indices, labels, {net or "fused": {protocol: (n, C)}}, bad files)."""
    # a chunk holds several batches so that images of one rescaled shape can share dense batches; pinned host
    # memory makes the copies to the GPU asynchronous
    loader = torch.utils.data.DataLoader(
        DecodedImages(items, max_scale(plans)),
        batch_size=max(64, 4 * batch_size),
        num_workers=workers,
        collate_fn=list,
        pin_memory=rt.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    done = 0
    it = iter(loader)
    while True:
        with timer("decode"):
            batch = next(it, None)
        if batch is None:
            return
        bad = [err for _, img, _, err in batch if img is None]
        good = [(i, img, y) for i, img, y, _ in batch if img is not None]
        done += len(batch)
        if good:
            idx = [i for i, _, _ in good]
            images = [img.to(rt.device, non_blocking=True) for _, img, _ in good]  # once for all nets and Q
            labels = torch.tensor([y for _, _, y in good])
            out = {n.name: net_posteriors(n, images, plan, flip, batch_size, rt, timer) for n, plan in zip(nets, plans)}
            if len(nets) > 1:
                out[FUSED] = {p: torch.stack([out[n.name][p] for n in nets]).mean(0) for p in plans[0]}
            yield idx, labels, out, bad
        elif bad:
            yield [], torch.zeros(0, dtype=torch.long), {}, bad
        if log:
            log(done, len(items))


class _Tally:
    """The running top-1 / top-k errors of every (net or fusion, protocol), each image's top-1 class (for the
    confusion matrices), the errors restricted to ``subset`` (the data's classes, when fewer than the net's),
    and what the caller keeps."""

    def __init__(
        self,
        rows: Sequence[str],
        protocols: Sequence[str],
        keep: bool,
        num_classes: int,
        subset: Sequence[int] | None = None,
    ) -> None:
        self.rows, self.protocols, self.keep = list(rows), list(protocols), keep
        self.meters = {(r, p): TopKErrors((1, 5)) for r in rows for p in protocols}
        self.subset = torch.tensor(list(subset), dtype=torch.long) if subset is not None else None
        self.position = torch.full((num_classes,), -1, dtype=torch.long)  # class index -> its column in the subset
        if self.subset is not None:
            self.position[self.subset] = torch.arange(len(self.subset))
            self.sub_meters = {(r, p): TopKErrors((1, 5)) for r in rows for p in protocols}
        self.top1: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        self.kept: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        self.kept_labels: list[torch.Tensor] = []
        self.indices: list[int] = []
        self.skipped: list[str] = []

    def add(self, chunk: Chunk) -> None:
        idx, labels, out, bad = chunk
        self.skipped += bad
        if not idx:
            return
        self.indices += idx
        self.kept_labels.append(labels)
        for r in self.rows:
            for p in self.protocols:
                scores = out[r][p]
                self.meters[(r, p)].update(scores, labels)
                self.top1[(r, p)].append(top1_predictions(scores))  # stays on the device: no sync a chunk
                if self.subset is not None:  # argmax over the data's classes only: the subset's own task
                    sub = scores.index_select(1, self.subset.to(scores.device))
                    self.sub_meters[(r, p)].update(sub, self.position[labels])
                if self.keep:
                    self.kept[(r, p)].append(scores.cpu())

    def confusion(self, r: str, p: str) -> torch.Tensor:
        return confusion_matrix(torch.cat(self.top1[(r, p)]), torch.cat(self.kept_labels), len(self.position))

    def subset_errors(self, r: str, p: str) -> dict[str, float | None]:
        if self.subset is None:
            return {}
        err = self.sub_meters[(r, p)].errors()
        return {"subset_top1_err": err[1], "subset_top5_err": err[5]}


def _results(
    nets: Sequence[Net], plans: Sequence[Plan], tally: _Tally, flip: bool, timer: Timer
) -> list[ProtocolResult]:
    """The table's rows: each net's, then the fusion's, under each protocol, with their compute time, confusion
    matrix and (on a subset of the classes) the errors restricted to the subset."""

    def seconds(net: Net, plan: Plan, p: str) -> float:
        # what the protocol costs on its own: the rescale at each of its Q plus its kinds' forward passes
        return sum(
            timer.seconds[(net.name, "rescale", q)] + sum(timer.seconds[(net.name, k, q)] for k in PROTOCOLS[p])
            for q in plan[p]
        )

    n = len(tally.indices)
    names = nets[0].classes or [str(i) for i in range(nets[0].num_classes)]
    results = []
    for r in tally.rows:
        for p in tally.protocols:
            err = tally.meters[(r, p)].errors()
            if r == FUSED:
                per_net = {nt.name: plan[p] for nt, plan in zip(nets, plans)}
                same = all(v == plans[0][p] for v in per_net.values())
                sc: Any = plans[0][p] if same else per_net
                secs = sum(seconds(nt, plan, p) for nt, plan in zip(nets, plans))
            else:
                i = [nt.name for nt in nets].index(r)
                sc, secs = plans[i][p], seconds(nets[i], plans[i], p)
            results.append(
                ProtocolResult(
                    r,
                    p,
                    sc,
                    flip,
                    err[1],
                    err[5],
                    n,
                    secs,
                    confusion=tally.confusion(r, p),
                    classes=names,
                    **tally.subset_errors(r, p),
                )
            )
    return results


def _default_workers(items: Sequence[EvalSample], rt: Runtime) -> int:
    """Decoding processes: min(8, CPUs - 1) for files on CUDA; none on the CPU (the nets need the cores) or for
    images already in memory."""
    in_memory = not isinstance(items[0][0], (str, os.PathLike))
    return 0 if rt.device.type != "cuda" or in_memory else max(0, min(8, (os.cpu_count() or 1) - 1))


def _batch_size(batch_size: int | None) -> int:
    """The views per forward pass asked for: ``DEFAULT_BATCH_SIZE`` when None; at least 1."""
    bs = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if bs < 1:
        raise ValueError(f"--batch-size must be at least 1, got {bs}")
    return bs


def evaluate(
    nets: Any,
    samples: Sequence[EvalSample] | str | os.PathLike | None = None,
    protocols: str | Sequence[str] = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    limit: int | None = None,
    workers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    return_posteriors: bool = False,
    log: Callable[[int, int], None] | None = None,
    amp: bool | None = None,
) -> EvalResult:
    """Top-1 / top-5 error of one or several nets (and of their fusion) under the paper's test protocols.

    Each row of the result (``EvalResult.get(protocol, net)``) also carries where the net errs: its
    ``confusion`` matrix (C, C), ``per_class`` accuracy and ``confused_pairs()``. When the data has fewer
    classes than the nets (an ImageNet subset: folders named by WordNet ids, or some of the nets' class
    names), each row is also scored among the data's classes only (``subset_top1_err``, ``subset_top5_err``).

    Args:
        nets: a VGG model, a ``Run``, a run folder, or a list of them. Several nets are evaluated each and fused
            (posteriors averaged). Models are moved to ``device`` and kept there; their train/eval mode is restored.
        samples: (image, label) pairs (image: a path or a uint8 (3, H, W) tensor), a folder of class folders, or
            None for the first run's validation data (``resolve_eval_samples``).
        protocols: "dense", "multicrop", "dense+multicrop", "center", or several (list or comma-separated).
        scales: test scales Q: None for the paper's defaults (multi-scale; one scale for "center"), "multi",
            "single", an int or a list of ints (shared by all nets).
        flip: add the horizontally flipped image's views (not for "center", the one-view baseline).
        batch_size: views per forward pass (a whole image for dense, one crop for multi-crop); default
            ``DEFAULT_BATCH_SIZE`` (256) on CUDA and CPU alike.
        device: "auto", "cpu", "cuda", ...
        limit: evaluate a fixed pseudo-random subset (seed 0) of this many samples, so that classes stay mixed.
        workers: DataLoader decoding processes; default min(8, CPUs - 1) on CUDA, 0 on CPU.
        mean: for bare models (runs carry their own).
        std: for bare models.
        classes: for bare models.
        return_posteriors: keep each row's (N, C) posteriors in the result.
        log: called with (images done, images in all) after each chunk of images (a progress bar).
        amp: None for bf16 autocast on CUDA and on a CPU with native bf16 (AMX / AVX512-bf16), float32 elsewhere;
            False for float32 everywhere (``--no-amp``); True for bf16 everywhere. The report records which ran.
    """
    t_start = time.perf_counter()
    rt = runtime(device, amp)
    net_list = as_nets(nets, mean=mean, std=std, classes=classes)
    protocol_list = parse_protocols(protocols)
    bs = _batch_size(batch_size)
    first = net_list[0]
    items, data_name, present = eval_samples(samples, first, limit)
    # the data has fewer classes than the net (an ImageNet subset): also scored among its own classes only
    subset = present if 0 <= present[0] and present[-1] < first.num_classes > len(present) else None
    workers = _default_workers(items, rt) if workers is None else workers
    plans = plan_scales(net_list, protocol_list, scales)
    bs = fit_eval_batch([n.model for n in net_list], plans, bs, rt.device)  # shrunk or refused, before any work
    rows = [n.name for n in net_list] + ([FUSED] if len(net_list) > 1 else [])
    tally = _Tally(rows, protocol_list, return_posteriors, first.num_classes, subset)
    timer = Timer(rt)
    with eval_mode([n.model for n in net_list], rt), torch.inference_mode():
        for chunk in stream(net_list, items, plans, flip, bs, rt, workers, timer, log):
            tally.add(chunk)
    if not tally.indices:
        raise ValueError(f"none of the {len(items)} images could be read: {'; '.join(tally.skipped[:3])}")
    return EvalResult(
        results=_results(net_list, plans, tally, flip, timer),
        n=len(tally.indices),
        num_classes=first.num_classes,
        k=effective_k(5, first.num_classes),
        skipped=tally.skipped,
        nets=[nt.name for nt in net_list],
        protocols=protocol_list,
        flip=flip,
        batch_size=bs,
        device=str(rt.device),
        precision=rt.precision,
        wall_s=time.perf_counter() - t_start,
        decode_s=timer.seconds["decode"],
        data=data_name,
        provenance=provenance(rt.device),
        posteriors={k: torch.cat(v) for k, v in tally.kept.items()},
        labels=torch.cat(tally.kept_labels) if return_posteriors else None,
        indices=tally.indices,
        subset=subset,
        subset_k=effective_k(5, len(subset)) if subset else None,
    )


__all__ = ["DEFAULT_BATCH_SIZE", "Timer", "eval_mode", "evaluate", "net_posteriors", "posteriors", "stream"]
