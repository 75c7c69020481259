"""Very deep features (Appendix B): the descriptor, the features file, the transfer with a linear SVM, uci-digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
import torch.nn.functional as F
from PIL import Image

from vggnet import create_model
from vggnet import descriptors as D
from vggnet import transfer as T
from vggnet.cli import main
from vggnet.convention import Convention
from vggnet.data import Stats, materialise, rescale, resolve_data
from vggnet.model import window_mask
from vggnet.weights import save_weights

TINY = dict(width=0.125, fc_width=64, crop_size=32)


@pytest.fixture
def net():
    return create_model("A", num_classes=3, init="kaiming", seed=0, **TINY).eval()


def images(n: int, h: int = 40, w: int = 52) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(n)]


def test_descriptor_is_the_penultimate_layer_averaged_with_the_flip_and_normalised(net):
    unit = Convention()  # the net sees pixels / 255
    imgs = images(3)
    d = D.describe(net, imgs, [32], unit, flip=False)
    assert d.shape == (3, 64)
    # a crop-sized image is one window: the descriptor is the FC head's penultimate layer, normalised
    square = images(2, 32, 32)
    with torch.no_grad():
        x = torch.stack(square).float() / 255
        head = net.classifier[:-1](torch.flatten(net.features(x), 1))
    assert torch.allclose(D.describe(net, square, [32], unit, flip=False), F.normalize(head, dim=1), atol=1e-5)
    assert torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-5)
    flipped = D.describe(net, [i.flip(-1) for i in imgs], [32], unit, flip=False)
    both = D.describe(net, imgs, [32], unit, flip=True)
    with torch.no_grad():  # the penultimate maps of the image and of its mirror image, averaged, then normalised
        x = rescale(torch.stack(imgs), 32).float() / 255
        # 32x42: the map's second column of windows has its centre beyond the edge and does not count (issue 21)
        assert window_mask(tuple(x.shape[-2:]), (1, 2), 32).tolist() == [[1.0, 0.0]]
        raw = net.dense(x, head=False)[..., 0, 0] + net.dense(x.flip(-1), head=False)[..., 0, 0]
    assert torch.allclose(both, F.normalize(raw, dim=1), atol=1e-5)
    # an image and its mirror image have one descriptor when flips are averaged
    mirror = D.describe(net, [i.flip(-1) for i in imgs], [32], unit, flip=True)
    assert torch.allclose(both, mirror, atol=1e-5) and not torch.allclose(d, flipped, atol=1e-3)


def test_several_scales_averaged_or_stacked(net):
    unit = Convention()  # the net sees pixels / 255
    imgs = images(2, 64, 64)
    per = [D.describe(net, imgs, [q], unit) for q in (32, 48, 64)]
    mean = D.describe(net, imgs, [32, 48, 64], unit, how="mean")
    stack = D.describe(net, imgs, [32, 48, 64], unit, how="stack")
    assert mean.shape == (2, 64) and stack.shape == (2, 192)
    assert torch.allclose(mean, F.normalize(sum(per) / 3, dim=1), atol=1e-5)
    assert torch.allclose(stack, F.normalize(torch.cat(per, 1), dim=1), atol=1e-5)
    assert torch.allclose(stack.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="must be >= the net's crop size 32"):
        D.describe(net, imgs, [16], unit)
    with pytest.raises(ValueError, match="mean or stack"):
        D.aggregate(per, "max")


def make_data(root: Path, per_class: int = 8) -> None:
    g = np.random.default_rng(0)
    for c in range(3):
        (root / f"k{c}").mkdir(parents=True)
        for i in range(per_class):
            a = (g.random((24, 24)) * 60).astype(np.uint8)
            a[:, c * 8 : c * 8 + 8] += 150  # a bright band whose place is the class
            Image.fromarray(a).save(root / f"k{c}" / f"{i}.png")


def make_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    save_weights(create_model("A", num_classes=3, init="kaiming", seed=0, **TINY), folder / "model.safetensors")
    (folder / "config.toml").write_text(
        tomli_w.dumps(dict(arch="A", scale_min=32, scale_max=32, init="kaiming", normalize="mean", **TINY))
    )
    Stats((0.3,) * 3, (0.2,) * 3, (0.1, 0.01, 0.001), ((1, 0, 0), (0, 1, 0), (0, 0, 1))).save(folder / "stats.json")
    (folder / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return folder


def test_features_file_refuses_another_request_and_transfers(tmp_path, capsys):
    data, run = tmp_path / "data", make_run(tmp_path / "run")
    make_data(data)
    out = tmp_path / "f.safetensors"
    argv = ["features", str(run), "--data", str(data), "--scales", "32,48", "--aggregate", "stack", "--out", str(out)]
    assert main(argv + ["--device", "cpu"]) == 0
    f = D.load_features(out)
    assert f.descriptors.shape == (24, 128) and f.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert len(f.files) == 24 and f.files[0].endswith("0.png") and f.classes == ["k0", "k1", "k2"]
    assert f.meta["scales"] == [32, 48] and f.meta["aggregate"] == "stack" and f.meta["net_sha256"]
    assert main(argv + ["--device", "cpu"]) == 0 and "up to date" in capsys.readouterr().out
    # the same file asked for other scales, or of another net: a clear error, the file untouched
    assert (
        main(["features", str(run), "--data", str(data), "--scales", "32", "--aggregate", "stack", "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert "holds descriptors of another request: scales [32, 48] (requested [32])" in err and "--out" in err
    assert (
        main(
            [
                "features",
                str(run),
                "--random-init",
                "--data",
                str(data),
                "--scales",
                "32,48",
                "--aggregate",
                "stack",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "net 'run" in capsys.readouterr().err
    # the baselines
    raw = tmp_path / "raw.safetensors"
    assert main(["features", "--raw-pixels", "8", "--data", str(data), "--out", str(raw)]) == 0
    assert D.load_features(raw).descriptors.shape == (24, 64)
    rnd = tmp_path / "rnd.safetensors"
    assert main(["features", str(run), "--random-init", "--data", str(data), "--scales", "32", "--out", str(rnd)]) == 0
    assert not torch.allclose(D.load_features(rnd).descriptors, f.descriptors[:, :64])
    capsys.readouterr()
    # the transfer on a tiny split: 3 training images a class, 2 splits
    rep = tmp_path / "rep"
    assert main(["transfer", str(raw), str(out), "--train-per-class", "3", "--splits", "2", "--out", str(rep)]) == 0
    text = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")][2:]
    assert "mean class recall %" in text and [r[5] for r in rows] == ["3", "3"]
    res = json.loads((rep / "transfer.json").read_text())["results"]
    assert [len(r["accuracy"]) for r in res] == [2, 2] and res[0]["accuracy"][0] > 0.9  # the band is in the pixels
    assert main(["transfer", str(raw), "--train-per-class", "8"]) == 2  # no test image left
    assert "no test image left" in capsys.readouterr().err
    assert main(["transfer", str(tmp_path / "none.safetensors")]) == 2


def test_random_splits_and_a_separable_problem():
    labels = np.repeat(np.arange(4), 10)
    splits = T.random_splits(labels, 3, 4, seed=0)
    for tr, te in splits:
        assert len(tr) == 12 and len(te) == 28 and not set(tr) & set(te)
        assert np.bincount(labels[tr]).tolist() == [3, 3, 3, 3]
    assert not np.array_equal(splits[0][0], splits[1][0])
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.eye(4)[labels] * 3 + 0.2 * torch.randn(40, 4, generator=g), dim=1)
    f = D.Features(x, torch.from_numpy(labels), [f"{i}" for i in range(40)], list("abcd"), {"scales": [1]})
    r = T.transfer(f, per_class=3, n_splits=3)
    assert r.accuracy == [1.0] * 3 and r.mean_class_recall == [1.0] * 3 and r.map == pytest.approx([1.0] * 3)
    assert all(c in T.C_GRID for c in r.c)
    # chance-level features: far below
    noise = D.Features(F.normalize(torch.randn(40, 4, generator=g), dim=1), torch.from_numpy(labels), [""] * 40, [], {})
    assert np.mean(T.transfer(noise, per_class=3, n_splits=3).accuracy) < 0.7


def test_uci_digits_is_embedded(tmp_path):
    root = materialise("uci-digits", tmp_path)
    train, val, classes = resolve_data("uci-digits", cache_dir=tmp_path)
    assert len(train) + len(val) == 1797 and classes == [str(d) for d in range(10)]
    with Image.open(train[0][0]) as im:
        assert im.size == (8, 8) and np.asarray(im).max() > 200  # 16 grey levels scaled to 0..255
    assert json.loads((root / "vggnet-data.json").read_text())["source"].startswith("sklearn")


def test_features_of_caffe_weights_feed_bgr_0_255_minus_the_mean(tmp_path):
    """`vgg features --weights FILE --normalize caffe`: the descriptors are those of the unfolded Caffe net fed BGR
    pixels on 0-255 minus the authors' mean BGR (issue 22: they were fed ImageNet's mean and std)."""
    from vggnet.convention import CAFFE_MEAN_BGR
    from vggnet.model import HEAD_NAMES, layer_names

    data = tmp_path / "data"
    make_data(data, per_class=2)
    ref = create_model("A", num_classes=3, init="kaiming", seed=3, **TINY).eval()
    names = layer_names("A", False)
    caffe = {}
    for i, m in enumerate(ref.features):
        if isinstance(m, torch.nn.Conv2d):
            caffe[f"{names[i]}.weight"], caffe[f"{names[i]}.bias"] = m.weight.detach(), m.bias.detach()
    for i, m in enumerate(ref.classifier):
        if isinstance(m, torch.nn.Linear):
            caffe[f"{HEAD_NAMES[i]}.weight"], caffe[f"{HEAD_NAMES[i]}.bias"] = m.weight.detach(), m.bias.detach()
    torch.save(caffe, tmp_path / "caffe.pth")
    out = tmp_path / "f.safetensors"
    assert (
        main(
            [
                "features",
                "--weights",
                str(tmp_path / "caffe.pth"),
                "--normalize",
                "caffe",
                "--data",
                str(data),
                "--scales",
                "32,40",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    got = D.load_features(out)
    imgs = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1) for f in got.files]
    bgr = Convention(CAFFE_MEAN_BGR, pixel_range=255, channel_order="BGR")  # as the Caffe net was trained
    want = D.describe(ref, imgs, [32, 40], bgr)
    assert torch.allclose(got.descriptors, want, atol=1e-4)
    imagenet = D.describe(ref, imgs, [32, 40], Convention((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert not torch.allclose(got.descriptors, imagenet, atol=1e-2)
