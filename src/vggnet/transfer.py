"""Transfer of very deep features (the paper's Appendix B): a linear SVM on descriptors, random splits.

The protocol of Caltech-101/256: N random splits, each with ``n`` training images per class and the remaining
images as the test set; a linear SVM (scikit-learn's ``LinearSVC``, one-vs-rest, squared hinge loss) whose C is
chosen by stratified cross-validation on the training split only. Reported over the splits (mean and std):

- accuracy;
- mean class recall (Caltech's measure: the recall of each class, averaged, so small classes count as much);
- mAP (VOC's measure): each class's average precision of the SVM's one-vs-rest scores over the test images,
  averaged over classes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .descriptors import Features, load_features
from .report import markdown_table

CLASSIFIERS = ("linear-svm",)
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def random_splits(
    labels: np.ndarray, per_class: int, n_splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` (train indices, test indices): ``per_class`` random images of each class train, the rest test.

    A class with ``per_class`` images or fewer cannot be split: ValueError naming it.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    small = [int(c) for c, n in zip(classes, counts) if n <= per_class]
    if small:
        raise ValueError(
            f"--train-per-class {per_class}: classes {small[:5]} have no test image left "
            f"(at most {int(counts.min())} images in a class); use fewer training images per class"
        )
    out = []
    for _ in range(n_splits):
        train = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
        mask = np.ones(len(labels), bool)
        mask[train] = False
        out.append((np.sort(train), np.flatnonzero(mask)))
    return out


def fit_linear_svm(x: np.ndarray, y: np.ndarray, cs: Sequence[float] = C_GRID, folds: int = 3, seed: int = 0):
    """A LinearSVC with C chosen by stratified ``folds``-fold cross-validation on (x, y); returns (svm, C)."""
    # scikit-learn takes a second to import: only when an SVM is fitted (deliberate lazy import)
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    per_class = int(np.unique(y, return_counts=True)[1].min())
    folds = min(folds, per_class)
    base = LinearSVC(dual="auto", max_iter=20000)
    if folds < 2 or len(cs) == 1:
        return base.set_params(C=cs[len(cs) // 2]).fit(x, y), cs[len(cs) // 2]
    search = GridSearchCV(base, {"C": list(cs)}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    search.fit(x, y)
    return search.best_estimator_, search.best_params_["C"]


def scores(svm, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, mean class recall and mAP of a fitted SVM on (x, y)."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    pred = svm.predict(x)
    decision = svm.decision_function(x)
    if decision.ndim == 1:  # two classes: one score, for the second class
        decision = np.stack([-decision, decision], 1)
    aps = [average_precision_score(y == c, decision[:, k]) for k, c in enumerate(svm.classes_) if (y == c).any()]
    return {
        "accuracy": float((pred == y).mean()),
        "mean_class_recall": float(balanced_accuracy_score(y, pred)),
        "map": float(np.mean(aps)),
    }


@dataclass
class TransferResult:
    """One (features file, training images per class) over its splits."""

    file: str
    net: str
    scales: list[int]
    aggregate: str
    dims: int
    per_class: int
    splits: int
    accuracy: list[float]
    mean_class_recall: list[float]
    map: list[float]
    c: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transfer(
    features: Features | str,
    per_class: int,
    n_splits: int = 5,
    seed: int = 0,
    classifier: str = "linear-svm",
    cs: Sequence[float] = C_GRID,
    folds: int = 3,
) -> TransferResult:
    """Train and test the linear SVM on ``n_splits`` random splits of a features file (module doc)."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"--classifier {classifier!r}: only linear-svm (the paper's) is available")
    name = str(features) if not isinstance(features, Features) else "(in memory)"
    f = load_features(features) if not isinstance(features, Features) else features
    x, y = f.descriptors.numpy().astype(np.float64), f.labels.numpy()
    t0 = time.perf_counter()
    acc, mcr, maps, chosen = [], [], [], []
    for k, (tr, te) in enumerate(random_splits(y, per_class, n_splits, seed)):
        svm, c = fit_linear_svm(x[tr], y[tr], cs, folds, seed + k)
        s = scores(svm, x[te], y[te])
        acc.append(s["accuracy"])
        mcr.append(s["mean_class_recall"])
        maps.append(s["map"])
        chosen.append(c)
    return TransferResult(
        name,
        f.net,
        list(f.meta.get("scales", [])),
        str(f.meta.get("aggregate", "")),
        int(x.shape[1]),
        per_class,
        n_splits,
        acc,
        mcr,
        maps,
        chosen,
        round(time.perf_counter() - t0, 2),
    )


def _ms(values: Sequence[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def markdown(results: Sequence[TransferResult]) -> str:
    """A table in the shape of the paper's Tables 11-12: descriptor (net, scales, aggregation) x training images
    per class; accuracy, mean class recall and mAP in %, mean ± std over the random splits."""
    rows = [
        (
            Path(r.file).name,
            r.net if len(r.net) < 60 else "..." + r.net[-57:],
            ",".join(map(str, r.scales)),
            r.aggregate,
            r.dims,
            r.per_class,
            _ms(r.accuracy),
            _ms(r.mean_class_recall),
            _ms(r.map),
        )
        for r in results
    ]
    return markdown_table(
        ["features", "net", "Q", "aggregate", "dims", "train / class", "accuracy %", "mean class recall %", "mAP %"],
        rows,
        "lllllrrrr",
    )


__all__ = ["TransferResult", "fit_linear_svm", "markdown", "random_splits", "scores", "transfer"]
