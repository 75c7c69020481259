"""Dense evaluation counts only the windows whose centre lies inside the image (issue 21, target 4)."""

from __future__ import annotations

import pytest
import torch

import vggnet
from vggnet.evaluation import dense_posteriors
from vggnet.model import spatial_average, window_mask


def _net(crop: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = vggnet.create_model("A", num_classes=5, width=1 / 16, fc_width=32, crop_size=crop, init="kaiming").eval()
    with torch.no_grad():  # posteriors far from uniform, so that averaging other windows shows
        net.classifier[6].weight.mul_(10)
    return net


@pytest.mark.parametrize(
    "crop,size",
    [(224, (256, 341)), (224, (224, 224)), (224, (384, 512)), (64, (96, 160)), (64, (73, 73)), (32, (64, 96))],
)
def test_paper_geometry_keeps_every_window_and_the_same_posteriors(crop, size):
    """Q a multiple of 32, the paper's 256x341 image at 224 crops (its 2x5 map), and any size at crops of 64 or
    more: every window counts, and the posteriors are the plain spatial average's."""
    net = _net(crop)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        scores = net.dense(x)
        if (crop, size) == (224, (256, 341)):
            assert scores.shape[-2:] == (2, 5)
        assert bool(window_mask(size, tuple(scores.shape[-2:]), crop).all())
        plain = scores.mean((-2, -1)).softmax(-1)
        got = dense_posteriors(net, [x[0]], flip=False)
    torch.testing.assert_close(got, plain)


def test_windows_mostly_beyond_the_edge_do_not_count_at_q38():
    """32-pixel crops at Q = 38: a 2x2 map whose second row and column see 6 pixels of image and 26 of padding.
    Only the window on the image counts: the dense posterior is the soft-max of that window's scores."""
    net = _net(32)
    x = torch.randn(1, 3, 38, 38)
    with torch.no_grad():
        scores = net.dense(x)
        assert scores.shape[-2:] == (2, 2)
        assert window_mask((38, 38), (2, 2), 32).tolist() == [[1.0, 0.0], [0.0, 0.0]]
        got = dense_posteriors(net, [x[0]], flip=False)
        first = scores[..., 0, 0].softmax(-1)
        plain = scores.mean((-2, -1)).softmax(-1)
    torch.testing.assert_close(got, first)
    assert not torch.allclose(got, plain, atol=1e-4)


def test_half_inside_window_counts_and_mask_shape():
    # a window whose centre lies on the edge sees as much image as padding: it counts
    assert window_mask((48, 48), (2, 2), 32).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert window_mask((38, 70), (2, 3), 32).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    scores = torch.arange(8.0).view(1, 2, 2, 2)
    torch.testing.assert_close(spatial_average(scores, (38, 38), 32), scores[..., 0, 0])
    torch.testing.assert_close(spatial_average(scores), scores.mean((-2, -1)))
