"""Top-k error, the paper's metric (section 3.2 / 4): top-1 and top-5 error on class scores or posteriors.

Ties policy: the true class's rank is the number of classes scored strictly higher, plus the number scored
equally that have a smaller class index. This is a stable descending sort, so ``k = 1`` agrees with
``scores.argmax(1)`` (which returns the first of equal maxima), and a net that gives every class the same
score predicts class 0 rather than being counted right for every image. A NaN score never outranks another
class, and a NaN score of the true class counts as an error (a diverged net scores 100% error, not 0%).

With fewer classes than k, the error is the top-``min(k, classes)`` error (``effective_k``), which is 0: every
true class is among all classes. Callers that print a "top-5" column say which k they used.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def effective_k(k: int, num_classes: int) -> int:
    """The k that top-k means with ``num_classes`` classes: ``min(k, num_classes)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(k, num_classes)


def target_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The 0-based rank of each true class among the scores (N, C), ties broken by class index (module doc).

    Rank 0 means the true class is the top-1 prediction; the image is top-k correct when rank < k.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, classes), got shape {tuple(scores.shape)}")
    labels = labels.to(device=scores.device, dtype=torch.long)
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must be ({scores.shape[0]},), got shape {tuple(labels.shape)}")
    n, c = scores.shape
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must be in [0, {c}), got values in [{int(labels.min())}, {int(labels.max())}]")
    target = scores.gather(1, labels[:, None])
    index = torch.arange(c, device=scores.device)
    above = (scores > target).sum(1)
    tied_before = ((scores == target) & (index[None, :] < labels[:, None])).sum(1)
    rank = above + tied_before
    return torch.where(target[:, 0].isnan(), torch.full_like(rank, c), rank)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (N,): whether the true class is among the ``min(k, classes)`` highest scores."""
    return target_rank(scores, labels) < effective_k(k, scores.shape[1])


def topk_error(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """The fraction of images whose true class is not among the ``min(k, classes)`` highest scores."""
    if scores.shape[0] == 0:
        raise ValueError("top-k error of zero images is undefined")
    return 1.0 - topk_correct(scores, labels, k).float().mean().item()


class TopKErrors:
    """Streaming top-k error counts over batches: ``update(scores, labels)`` per batch, ``errors()`` at the end.

    Counts stay on the scores' device, so updating costs no GPU sync; ``errors()`` reads them once.
    """

    def __init__(self, ks: Iterable[int] = (1, 5)) -> None:
        self.ks = tuple(ks)
        self.n = 0
        self.num_classes: int | None = None
        self._wrong: dict[int, torch.Tensor | int] = {k: 0 for k in self.ks}

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        if self.num_classes is None:
            self.num_classes = scores.shape[1]
        elif scores.shape[1] != self.num_classes:
            raise ValueError(f"scores have {scores.shape[1]} classes, earlier batches had {self.num_classes}")
        rank = target_rank(scores, labels)
        for k in self.ks:
            self._wrong[k] = self._wrong[k] + (rank >= effective_k(k, scores.shape[1])).sum()
        self.n += scores.shape[0]

    def effective_ks(self) -> dict[int, int]:
        """Requested k -> the k used (``min(k, classes)``)."""
        return {k: effective_k(k, self.num_classes or k) for k in self.ks}

    def errors(self) -> dict[int, float]:
        """Requested k -> top-k error (a fraction in [0, 1]); NaN before any update."""
        if not self.n:
            return {k: float("nan") for k in self.ks}
        return {k: int(self._wrong[k]) / self.n for k in self.ks}


def top1_predictions(scores: torch.Tensor) -> torch.Tensor:
    """The top-1 class of each row of scores (N, C), with the ties policy of :func:`target_rank`: the first of
    equal maxima, and a NaN score never the prediction (unless a row is all NaN: class 0)."""
    return scores.float().nan_to_num(nan=float("-inf")).argmax(1)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (C, C) int64 confusion matrix: entry [t, p] counts the images of true class t predicted as p.

    Row t sums to the number of images of class t; its diagonal entry is how many of them were right.
    """
    predicted, labels = predicted.long().flatten().cpu(), labels.long().flatten().cpu()
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.numel()} predictions for {labels.numel()} labels")
    for name, t in (("labels", labels), ("predictions", predicted)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{int(t.min())}, {int(t.max())}]")
    flat = torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images per class (C,) int64, top-1 accuracy per class (C,) float64, NaN for a class without images)."""
    n = confusion.sum(1)
    correct = confusion.diagonal()
    return n, torch.where(
        n > 0, correct.double() / n.clamp(min=1), torch.full(n.shape, float("nan"), dtype=torch.float64)
    )


def most_confused(confusion: torch.Tensor, top: int | None = None) -> list[tuple[int, int, int, float]]:
    """The off-diagonal cells of a confusion matrix, most images first: (true class, predicted class, count,
    share of the true class's images). Ties: the larger share first, then by class indices. ``top``: keep these."""
    c = confusion.shape[0]
    off = confusion.clone()
    off.fill_diagonal_(0)
    cells = off.flatten().nonzero().flatten()  # row-major: by true class, then predicted class
    counts = off.flatten()[cells]
    share = counts.double() / confusion.sum(1)[cells // c].double()
    # stable sorts, the last key first: share descending, then count descending
    order = torch.sort(share, descending=True, stable=True).indices
    order = order[torch.sort(counts[order], descending=True, stable=True).indices]
    if top is not None:
        order = order[:top]
    cells, counts, share = cells[order], counts[order], share[order]
    return list(zip((cells // c).tolist(), (cells % c).tolist(), counts.tolist(), share.tolist()))
