"""Top-k error on hand-made score tables: exact values, the ties policy, k above the class count, NaN."""

import math

import pytest
import torch

from vggnet.metrics import TopKErrors, effective_k, target_rank, topk_correct, topk_error

# 4 images, 6 classes; the true class's rank is written next to each row
SCORES = torch.tensor(
    [
        [0.1, 0.5, 0.2, 0.0, 0.1, 0.1],  # label 1: rank 0
        [0.9, 0.0, 0.8, 0.7, 0.6, 0.5],  # label 4: rank 3
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 0: rank 5
        [0.3, 0.2, 0.4, 0.1, 0.0, 0.0],  # label 1: rank 2
    ]
)
LABELS = torch.tensor([1, 4, 0, 1])


def test_rank_and_topk_error_exact():
    assert target_rank(SCORES, LABELS).tolist() == [0, 3, 5, 2]
    assert topk_error(SCORES, LABELS, 1) == pytest.approx(3 / 4)
    assert topk_error(SCORES, LABELS, 3) == pytest.approx(2 / 4)
    assert topk_error(SCORES, LABELS, 4) == pytest.approx(1 / 4)
    assert topk_error(SCORES, LABELS, 5) == pytest.approx(1 / 4)
    assert topk_error(SCORES, LABELS, 6) == 0.0
    assert topk_correct(SCORES, LABELS, 5).tolist() == [True, True, False, True]


def test_ties_break_towards_the_lower_class_index():
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    # class 0 ranks before an equally scored class 1, as argmax (first maximum) would have it
    assert target_rank(scores, torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]
    assert topk_correct(scores, torch.tensor([0, 1, 2]), 1).tolist() == [True, False, False]
    assert topk_correct(scores, torch.tensor([0, 1, 2]), 2).tolist() == [True, True, False]
    # k = 1 agrees with argmax on random scores with many ties
    s = torch.randint(0, 3, (200, 7)).float()
    y = torch.randint(0, 7, (200,))
    assert torch.equal(topk_correct(s, y, 1), s.argmax(1) == y)


def test_k_above_the_class_count():
    scores = torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    labels = torch.tensor([0, 1])  # ranks 2 and 1 (class 1 ties with class 2 and comes first)
    assert effective_k(5, 3) == 3 and effective_k(5, 1000) == 5
    assert topk_error(scores, labels, 5) == 0.0  # top-5 of 3 classes is top-3: always right
    assert topk_error(scores, labels, 2) == pytest.approx(1 / 2)
    assert topk_error(scores, labels, 1) == 1.0
    with pytest.raises(ValueError):
        effective_k(0, 3)


def test_nan_scores_count_as_errors():
    scores = torch.tensor([[float("nan")] * 3, [float("nan"), 0.1, 0.2]])
    assert topk_correct(scores, torch.tensor([0, 2]), 3).tolist() == [False, True]
    assert target_rank(scores, torch.tensor([0, 2])).tolist() == [3, 0]


def test_streaming_counts_equal_one_shot():
    g = torch.Generator().manual_seed(0)
    s, y = torch.randn(100, 10, generator=g), torch.randint(0, 10, (100,), generator=g)
    meter = TopKErrors((1, 5))
    assert all(math.isnan(v) for v in meter.errors().values())
    for i in range(0, 100, 30):
        meter.update(s[i : i + 30], y[i : i + 30])
    assert meter.n == 100
    assert meter.errors() == {1: pytest.approx(topk_error(s, y, 1)), 5: pytest.approx(topk_error(s, y, 5))}
    assert meter.effective_ks() == {1: 1, 5: 5}
    with pytest.raises(ValueError):
        meter.update(torch.randn(2, 4), torch.tensor([0, 1]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        target_rank(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError):
        target_rank(torch.randn(3), torch.tensor([0]))
    with pytest.raises(ValueError):
        topk_error(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
