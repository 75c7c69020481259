"""Tests of vggnet.data: decoding and bad input, folders, transforms, the randomness contract, statistics,
collate, the sampler, and the batched (GPU) path on CPU tensors. Tiny images throughout: the file runs in
seconds on 2 CPU cores."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vggnet.data import (
    IMAGENET_STATS,
    AugParams,
    BadImageError,
    EvalTransform,
    ImageDataset,
    SeededSampler,
    Stats,
    TrainTransform,
    center_crop,
    collate,
    collate_list,
    compute_stats,
    decode_bytes,
    draw_params,
    epoch_keys,
    find_classes,
    load_image,
    read_class_names,
    rescale,
    resized_crop,
    resolve_data,
    scan_folder,
    split_samples,
)
from vggnet.data.gpu import EncodedDataset, GPULoader, augment_batch, decode_batch
from vggnet.data.transforms import _span, colour_shift, crop_offsets, eval_rescale
from vggnet.training import BatchPlan

RNG = np.random.default_rng(0)

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (which is not a dependency yet)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def photo(h: int, w: int, seed: int = 0, grain: int = 8) -> np.ndarray:
    """A smooth RGB uint8 image with detail every ``grain`` pixels (JPEG-friendly, unlike white noise)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (max(2, h // grain), max(2, w // grain), 3), dtype=np.uint8))
    return np.array(low.resize((w, h), Image.BICUBIC))


def save(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    im.save(path, fmt, **kw)
    return path


def png(w: int, h: int, bits: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit RGB, nor a header that lies about the size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, bits, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    h, w, _ = array.shape
    return png(w, h, 16, 2, b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h)))


def tree(root: Path, counts: dict[str, int], size=(12, 16), fmt="PNG") -> Path:
    """root/<class>/<i>.png with counts[class] images each."""
    for c, n in counts.items():
        for i in range(n):
            save(root / c / f"{i}.{fmt.lower()}", photo(*size, seed=1000 * sum(map(ord, c)) + i), fmt)
    return root


# ---------------------------------------------------------------------------------------------- decoding


def test_load_rgb_png_exact(tmp_path):
    a = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    x = load_image(save(tmp_path / "a.png", a))
    assert x.dtype == torch.uint8 and x.shape == (3, 7, 9)
    assert torch.equal(x, torch.from_numpy(a).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_modes_decode_like_pillow(tmp_path, mode):
    path = save(tmp_path / "a.jpg", photo(40, 56), "JPEG", mode=mode, quality=90)
    x = load_image(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert x.shape == (3, 40, 56) and x.dtype == torch.uint8
    assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - ref).mean() < 1.0
    if mode == "L":
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_alpha_palette_and_16bit(tmp_path):
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    x = load_image(save(tmp_path / "rgba.png", rgba))
    assert torch.equal(x, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))  # alpha dropped, as torchvision

    p = Image.fromarray(RNG.integers(0, 4, (6, 5), dtype=np.uint8), "P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    p.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").shape == (3, 6, 5)

    gray16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    assert x.dtype == torch.uint8 and torch.equal(x[1], torch.from_numpy((gray16 >> 8).astype(np.uint8)))

    rgb16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(png16(rgb16))
    x = load_image(tmp_path / "rgb16.png")
    assert torch.equal(x, torch.from_numpy((rgb16 >> 8).astype(np.uint8)).permute(2, 0, 1))


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_formats(tmp_path, fmt):
    x = load_image(save(tmp_path / f"a.{fmt.lower()}", photo(10, 14), fmt))
    assert x.shape == (3, 10, 14) and x.dtype == torch.uint8


def test_reduced_size_jpeg_decode(tmp_path):
    path = save(tmp_path / "big.jpg", photo(192, 256, grain=48), "JPEG", quality=95)
    assert load_image(path).shape == (3, 192, 256)
    assert load_image(path, min_side=100).shape == (3, 192, 256)  # less than 2x larger: full size
    small = load_image(path, min_side=40)  # 1/4 is the largest reduction that keeps >= 40
    assert small.shape == (3, 48, 64)
    # the reduced decode rescales to the image the full decode rescales to (the exact rescale and centre crop of
    # evaluation; training's resized_crop places its window within half a pixel, which on this grainy photo
    # alone moves pixels by several levels, so it is not the measure here)
    full = center_crop(eval_rescale(load_image(path), 40).float(), 32)
    assert (center_crop(eval_rescale(small, 40).float(), 32) - full).abs().mean() < 1


def _bad_files(d: Path) -> dict[str, Path]:
    jpg = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(jpg, "JPEG", quality=90)
    files = {
        "truncated": d / "trunc.jpg",
        "empty": d / "empty.jpg",
        "not an image": d / "text.jpg",
        "missing": d / "gone.png",
    }
    files["truncated"].write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    files["empty"].write_bytes(b"")
    files["not an image"].write_text("this is not an image\n" * 20)
    return files


def test_bad_files_raise_bad_image_error(tmp_path):
    for why, path in _bad_files(tmp_path).items():
        with pytest.raises(BadImageError) as e:
            load_image(path)
        assert str(path) in str(e.value), why


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("pixels", [2000, 1000])  # 64x64 = 4096 pixels: above 2x the limit (error), above 1x (warning)
def test_decompression_bomb_is_bad_not_decoded(tmp_path, monkeypatch, pixels):
    path = save(tmp_path / "bomb.png", photo(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(path)
    with pytest.raises(BadImageError):
        decode_bytes(path.read_bytes(), path)


def test_real_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    # 60000 x 60000 RGB would be 10 GB decoded; the file is a few hundred bytes
    path = tmp_path / "bomb.png"
    path.write_bytes(png(60000, 60000, 8, 2, b"\x00" * 1000))
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(path)


def test_dataset_skips_bad_files_and_collate_reports_them(tmp_path, caplog):
    good = save(tmp_path / "good.png", photo(20, 30))
    bad = _bad_files(tmp_path)
    samples = [(str(good), 3)] + [(str(p), 1) for p in bad.values()]
    ds = ImageDataset(samples, TrainTransform(None, crop_size=16, scale=(16, 24), colour_std=0))
    with caplog.at_level(logging.WARNING, logger="vggnet.data"):
        items = [ds[(i, 7)] for i in range(len(ds))]
    assert items[0][0] is not None and all(item[0] is None for item in items[1:])
    for p in bad.values():
        assert str(p) in caplog.text
    images, labels, bad_paths = collate(items)
    assert images.shape == (1, 3, 16, 16) and labels.tolist() == [3] and labels.dtype == torch.int64
    assert bad_paths == [str(p) for p in bad.values()]


def test_small_image_is_upscaled(tmp_path):
    path = save(tmp_path / "tiny.png", photo(5, 7))
    x = TrainTransform(None, crop_size=32, scale=(32, 40), colour_std=0)(path, torch.Generator().manual_seed(0))
    assert x.shape == (3, 32, 32)
    assert EvalTransform(None, size=32)(path).shape == (3, 32, 45)


# ----------------------------------------------------------------------------------------------- folders


def test_scan_ignores_hidden_and_non_images(tmp_path):
    root = tree(tmp_path / "data", {"b": 2, "a": 3})
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    save(root / "a" / ".hidden.png", photo(4, 4))
    save(root / "a" / ".ipynb_checkpoints" / "x.png", photo(4, 4))
    save(root / "b" / "sub" / "deep.JPG", photo(8, 8), "JPEG")
    (root / ".cache").mkdir()
    samples, classes = scan_folder(root)
    assert classes == ["a", "b"] == find_classes(root)
    assert [s[1] for s in samples] == [0, 0, 0, 1, 1, 1]
    assert all(Path(p).suffix.lower() in (".png", ".jpg") and not Path(p).name.startswith(".") for p, _ in samples)
    assert any(p.endswith("deep.JPG") for p, _ in samples)


def test_folder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders.*empty"):
        scan_folder(tmp_path / "empty")
    save(tmp_path / "flat" / "x.png", photo(4, 4))
    with pytest.raises(ValueError, match="one subfolder per class"):
        scan_folder(tmp_path / "flat")
    root = tree(tmp_path / "t", {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*b has no images"):
        scan_folder(root)
    train = tree(tmp_path / "train", {"a": 1, "b": 1})
    val = tree(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"):
        resolve_data(train, val=val)
    with pytest.raises(FileNotFoundError, match="neither an embedded data set"):
        resolve_data(tmp_path / "no-such-data")


def test_stratified_seeded_split():
    samples = [(f"a{i}", 0) for i in range(10)] + [(f"b{i}", 1) for i in range(20)] + [("c0", 2)]
    train, val = split_samples(samples, 0.2, seed=1)
    assert [s[1] for s in val].count(0) == 2 and [s[1] for s in val].count(1) == 4
    assert [s[1] for s in train].count(2) == 1  # every class keeps a training image
    assert sorted(train + val) == sorted(samples) and not set(train) & set(val)
    assert split_samples(samples, 0.2, seed=1) == (train, val)
    assert split_samples(samples, 0.2, seed=2) != (train, val)
    assert split_samples(samples, 0.0) == (samples, [])


def test_class_names_files(tmp_path):
    classes = ["n01440764", "n01443537"]
    (tmp_path / "map.txt").write_text("n01443537 goldfish, Carassius auratus\nn01440764 tench\nn09999999 other\n")
    assert read_class_names(tmp_path / "map.txt", classes) == ["tench", "goldfish, Carassius auratus"]
    (tmp_path / "list.txt").write_text("tench\n\ngoldfish\n")
    assert read_class_names(tmp_path / "list.txt", classes) == ["tench", "goldfish"]
    (tmp_path / "short.txt").write_text("tench\n")
    with pytest.raises(ValueError, match="does not fit the 2 class folders: it has 1 lines"):
        read_class_names(tmp_path / "short.txt", classes)
    (tmp_path / "partial.txt").write_text("n01440764 tench\nn09999999 other\n")
    with pytest.raises(ValueError, match=r"no '<folder> <name>' line for \['n01443537'\]"):
        read_class_names(tmp_path / "partial.txt", classes)


def test_resolve_data_layouts(tmp_path):
    split_root = tmp_path / "imagenet"
    tree(split_root / "train", {"n1": 4, "n2": 3})
    tree(split_root / "val", {"n1": 1, "n2": 2})
    (tmp_path / "names.txt").write_text("n1 cat\nn2 dog\n")
    train, val, classes = resolve_data(split_root, class_names=tmp_path / "names.txt")
    assert (len(train), len(val), classes) == (7, 3, ["cat", "dog"])
    assert all("/val/" in p for p, _ in val)

    single = tree(tmp_path / "single", {"x": 10, "y": 10})
    train, val, classes = resolve_data(single, val_fraction=0.3, seed=0)
    assert (len(train), len(val), classes) == (14, 6, ["x", "y"])
    assert resolve_data(single, val_fraction=0.3, seed=0)[1] == val

    other_val = tree(tmp_path / "other-val", {"x": 2, "y": 1})
    train, val, _ = resolve_data(single, val=other_val)  # an explicit val folder replaces the held-out split
    assert (len(train), len(val)) == (20, 3) and all("other-val" in p for p, _ in val)


# -------------------------------------------------------------------------------------------- transforms


def test_train_transform_shape_and_range(tmp_path):
    path = save(tmp_path / "a.png", photo(30, 50))
    raw = TrainTransform(None, crop_size=32, scale=(32, 48), colour_std=0)
    for seed in range(20):
        x = raw(path, torch.Generator().manual_seed(seed))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
    stats = Stats(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), eigval=(0, 0, 0), eigvec=IMAGENET_STATS.eigvec)
    g = torch.Generator().manual_seed(3)
    plain = raw(path, torch.Generator().manual_seed(3))
    centred = TrainTransform(stats, crop_size=32, scale=(32, 48))(path, g)
    assert torch.allclose(centred, plain - torch.tensor(stats.mean)[:, None, None], atol=1e-6)
    scaled = TrainTransform(stats, 32, (32, 48), divide_std=True)(path, torch.Generator().manual_seed(3))
    expect = (plain - torch.tensor(stats.mean)[:, None, None]) / torch.tensor(stats.std)[:, None, None]
    assert torch.allclose(scaled, expect, atol=1e-5)


def test_cached_transform_decodes_each_file_once_and_changes_nothing(tmp_path, monkeypatch):
    """cache_images: the same tensors as decoding at every use, each file decoded once; flips and the colour
    shift work on copies, so the cached image stays as decoded."""
    import vggnet.data.transforms as tf_module

    paths = [save(tmp_path / f"{i}.png", photo(40, 56, seed=i)) for i in range(3)]
    stats = Stats(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), eigval=(0.2, 0.1, 0.05), eigvec=IMAGENET_STATS.eigvec)
    plain = TrainTransform(stats, crop_size=32, scale=(32, 48), flip=True)
    cached = TrainTransform(stats, crop_size=32, scale=(32, 48), flip=True)
    cached.cache = {}
    calls = []
    real = tf_module.load_image
    monkeypatch.setattr(tf_module, "load_image", lambda p, min_side=None: calls.append(p) or real(p, min_side))
    for epoch in range(4):
        for i, p in enumerate(paths):
            g1, g2 = torch.Generator().manual_seed(10 * epoch + i), torch.Generator().manual_seed(10 * epoch + i)
            assert torch.equal(plain(p, g1), cached(p, g2))
    assert len(calls) == 4 * 3 + 3  # the plain transform every time, the cached one once a file
    for p in paths:
        assert torch.equal(cached.cache[str(p)], real(p))


def test_eval_transform_whole_image_and_centre_crop(tmp_path):
    path = save(tmp_path / "a.png", photo(40, 60))
    whole = EvalTransform(None, size=48)(path)
    assert whole.shape == (3, 48, 72) and 0 <= whole.min() and whole.max() <= 1
    crop = EvalTransform(None, size=48, crop_size=32)(path)
    assert crop.shape == (3, 32, 32)
    assert torch.equal(crop, whole[:, 8:40, 20:52])  # the centre, exactly
    with pytest.raises(ValueError):
        EvalTransform(None, size=32, crop_size=48)


def test_one_centre_crop_for_validation_localisation_and_the_protocols():
    """Training's validation (EvalTransform), localisation's boxes (crop_offsets at 0.5) and vgg eval's centre
    crop take the same pixels, odd spare ranges included (37 - 32 = 5: offset 2, where they once differed)."""
    g = torch.Generator().manual_seed(0)
    for h, w in [(37, 37), (37, 50), (40, 57), (33, 61)]:
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        for q in (32, 35, 37):
            tf = EvalTransform(None, size=q, crop_size=32)
            ours = tf.resample(img, tf.sample())
            protocol = center_crop(eval_rescale(img, q), 32)
            assert torch.equal(ours, protocol), (h, w, q)
            nh, nw, top, left = crop_offsets(h, w, AugParams(q), 32)
            assert (top, left) == ((nh - 32) // 2, (nw - 32) // 2)


def test_scale_jitter_in_range_and_covers_it():
    draws = [draw_params(torch.Generator().manual_seed(s), (32, 40)).scale for s in range(2000)]
    counts = np.bincount(draws, minlength=41)[32:]
    assert min(draws) == 32 and max(draws) == 40 and (counts > 0).all()
    assert counts.min() > 2000 / 9 * 0.7  # about uniform
    assert {draw_params(torch.Generator().manual_seed(s), 48).scale for s in range(20)} == {48}


def test_flips_about_half_and_mirror(tmp_path):
    flips = [draw_params(torch.Generator().manual_seed(s), 32).flip for s in range(4000)]
    assert abs(np.mean(flips) - 0.5) < 0.04  # 5 standard deviations
    assert not any(draw_params(torch.Generator().manual_seed(s), 32, flip=False).flip for s in range(100))
    img = torch.from_numpy(photo(30, 40)).permute(2, 0, 1).contiguous()
    t = TrainTransform(None, crop_size=24, scale=30, colour_std=0)
    p = AugParams(30, 0.3, 0.7, flip=False)
    assert torch.equal(t.apply(img, AugParams(30, 0.3, 0.7, flip=True)), t.apply(img, p).flip(-1))


def test_params_stream_is_fixed_and_independent_of_options():
    a = draw_params(torch.Generator().manual_seed(5), (256, 512), flip=True, colour_std=0.1)
    b = draw_params(torch.Generator().manual_seed(5), (256, 512), flip=False, colour_std=0.0)
    assert (a.scale, a.top, a.left) == (b.scale, b.top, b.left) and b.alpha == (0.0, 0.0, 0.0)
    assert a == draw_params(torch.Generator().manual_seed(5), (256, 512))


def test_colour_shift_spread():
    alphas = np.array([draw_params(torch.Generator().manual_seed(s), 32, colour_std=0.1).alpha for s in range(4000)])
    assert np.allclose(alphas.mean(0), 0, atol=0.006) and np.allclose(alphas.std(0), 0.1, rtol=0.05)
    assert abs(np.corrcoef(alphas.T)[0, 1]) < 0.06
    # applied to a constant image with axis-aligned components: channel c moves by alpha_c * eigval_c
    eigval = (0.2, 0.1, 0.05)
    stats = Stats(mean=(0, 0, 0), std=(1, 1, 1), eigval=eigval, eigvec=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    t = TrainTransform(stats, crop_size=8, scale=8, colour_std=0.1, flip=False)
    img = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    shifts = np.array(
        [(t.apply(img, t.sample(torch.Generator().manual_seed(s)))[:, 0, 0] - 128 / 255).tolist() for s in range(1000)]
    )
    assert np.allclose(shifts.std(0), 0.1 * np.array(eigval), rtol=0.1)
    # and the shift is eigvec @ (alpha * eigval) for a general basis
    q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    alpha = (0.3, -1.0, 0.5)
    assert np.allclose(colour_shift(alpha, eigval, q.tolist()), q @ (np.array(alpha) * eigval))


def test_resized_crop_is_rescale_then_crop():
    # exact where the source region starts at the image border
    img = torch.from_numpy(photo(50, 70)).permute(2, 0, 1).float()
    assert torch.allclose(resized_crop(img, 64, 32, 0.0, 0.0), rescale(img, 64)[:, :32, :32], atol=1e-3)
    # elsewhere within half a rescaled pixel: on a linear ramp the error is at most half a pixel's slope
    h, w = 60, 80
    ramp = (torch.arange(h, dtype=torch.float64)[:, None] * 1.0 + torch.arange(w)[None, :] * 2.0).float()
    ramp = ramp.expand(3, h, w)
    for s in range(40):
        p = draw_params(torch.Generator().manual_seed(s), (32, 120))
        nh, nw, top, left = crop_offsets(h, w, p, 32)
        full = rescale(ramp, p.scale)[:, top : top + 32, left : left + 32]
        out = resized_crop(ramp, p.scale, 32, p.top, p.left)
        inner = (slice(None), slice(4, -4), slice(4, -4))  # away from the image border, where the ramp bends
        bound = 0.5 * (1.0 / (nh / h) + 2.0 / (nw / w)) + 1e-3
        assert (out - full)[inner].abs().max() <= bound, (p, nh, nw)
    # the region always covers the filter's reach, and the rounding is at most half a pixel
    for f in (0.3, 0.68, 1.0, 1.37, 6.0):
        for offset in range(0, 50, 7):
            r0, r1, k0 = _span(offset, 32, f, 400)
            assert abs(r0 * f + k0 - offset) <= 0.5 + 1e-9
            assert r0 <= offset / f - max(1, 1 / f) or r0 == 0
    # uint8 on the CPU stays uint8 and agrees with float up to rounding
    u8 = img.round().to(torch.uint8)
    assert resized_crop(u8, 64, 32, 0.4, 0.6).dtype == torch.uint8
    assert (resized_crop(u8, 64, 32, 0.4, 0.6).float() - resized_crop(u8.float(), 64, 32, 0.4, 0.6)).abs().max() <= 1


# ------------------------------------------------------------------------------------ randomness contract


def test_same_index_and_seed_give_identical_tensors(tmp_path):
    root = tree(tmp_path / "d", {"a": 3}, size=(40, 50), fmt="JPEG")
    samples, _ = scan_folder(root)
    stats = Stats(mean=(0.4, 0.5, 0.6), std=(1, 1, 1), eigval=IMAGENET_STATS.eigval, eigvec=IMAGENET_STATS.eigvec)
    a, b = (ImageDataset(samples, TrainTransform(stats, crop_size=32, scale=(32, 64))) for _ in range(2))
    for key in [(0, 1), (1, 2**62), (2, 12345)]:
        assert torch.equal(a[key][0], a[key][0]) and torch.equal(a[key][0], b[key][0])
    assert not torch.equal(a[(0, 1)][0], a[(0, 2)][0])
    # int keys draw from torch's global RNG: reproducible under torch.manual_seed, random otherwise
    torch.manual_seed(0)
    x = a[0][0]
    torch.manual_seed(0)
    assert torch.equal(x, a[0][0])


def test_worker_count_does_not_change_batches(tmp_path):
    root = tree(tmp_path / "d", {"a": 5, "b": 5}, size=(20, 24))
    samples, _ = scan_folder(root)
    ds = ImageDataset(samples, TrainTransform(None, crop_size=16, scale=(16, 24), colour_std=0))

    def batches(workers):
        sampler = SeededSampler(len(ds), seed=3)
        sampler.set_epoch(2)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, collate_fn=collate)
        return [(x, y) for x, y, _ in loader]

    for (x0, y0), (x2, y2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_seeded_sampler():
    s = SeededSampler(10, seed=7)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(10)) and first == list(s)
    order, seeds = epoch_keys(10, 7, 0)
    assert first == list(zip(order, seeds))  # one rule for the order and the seeds: epoch_keys
    one_batch = next(iter(BatchPlan(10, 10, world=1, rank=0, accum=1, seed=7)))
    assert one_batch == first  # ... which training's batch plan follows too
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in first]
    s.set_epoch(1, start=4)
    whole = SeededSampler(10, seed=7)
    whole.set_epoch(1)
    ref = list(whole)
    assert list(s) == ref[4:] and len(s) == 6
    # ranks: rank r's batch b of size B, over all ranks, is batch b of size B * world of one process
    shards = []
    for r in range(3):
        sh = SeededSampler(10, seed=7, rank=r, world_size=3)
        sh.set_epoch(1)
        shards.append(list(sh))
    assert all(len(x) == 4 for x in shards)
    padded = ref + ref[:2]
    for b in range(2):
        merged = sorted(k for sh in shards for k in sh[2 * b : 2 * b + 2])
        assert merged == sorted(padded[6 * b : 6 * b + 6])
    seeds_of = {e: dict(zip(*epoch_keys(10, 7, e))) for e in (1, 2)}
    assert seeds_of[1] != seeds_of[2] and dict(zip(*epoch_keys(10, 8, 1))) != seeds_of[1]
    assert all(0 <= v < 2**62 for v in seeds_of[1].values())
    unshuffled = list(SeededSampler(5, shuffle=False))
    assert [i for i, _ in unshuffled] == [0, 1, 2, 3, 4] and dict(unshuffled) == dict(zip(*epoch_keys(5, 0, 0)))


# -------------------------------------------------------------------------------------------- statistics


def test_mean_rgb_of_a_folder_equals_hand_computed(tmp_path):
    save(tmp_path / "d" / "a" / "red.png", np.full((2, 2, 3), (255, 0, 51), np.uint8))
    save(tmp_path / "d" / "b" / "blue.png", np.full((4, 2, 3), (0, 102, 255), np.uint8))
    stats = compute_stats(tmp_path / "d")
    # 4 pixels of one colour, 8 of the other, on the [0, 1] scale
    expect = (4 * np.array([255, 0, 51]) + 8 * np.array([0, 102, 255])) / 12 / 255
    assert np.allclose(stats.mean, expect, atol=1e-12)
    assert (stats.images, stats.pixels) == (2, 12)


def test_stats_match_numpy_over_all_pixels(tmp_path):
    arrays = [photo(9, 13, seed=1), photo(20, 7, seed=2), photo(16, 16, seed=3)]
    paths = [save(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)]
    stats = compute_stats([str(p) for p in paths])
    px = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    assert np.allclose(stats.mean, px.mean(0), atol=1e-12)
    assert np.allclose(stats.std, px.std(0), atol=1e-12)
    v, lam = np.array(stats.eigvec), np.array(stats.eigval)
    assert np.allclose(v @ np.diag(lam) @ v.T, np.cov(px.T, bias=True), atol=1e-12)
    assert np.allclose(v.T @ v, np.eye(3), atol=1e-12) and lam[0] >= lam[1] >= lam[2] >= 0


def test_stats_sampling_bad_files_and_json(tmp_path):
    paths = [str(save(tmp_path / f"{i}.png", np.full((2, 2, 3), 10 * i, np.uint8))) for i in range(6)]
    (tmp_path / "bad.png").write_bytes(b"nope")
    a = compute_stats(paths + [str(tmp_path / "bad.png")], max_images=3, seed=1)
    assert a == compute_stats(paths + [str(tmp_path / "bad.png")], max_images=3, seed=1)
    assert a.images in (2, 3)
    assert compute_stats(paths, max_images=None).images == 6
    assert compute_stats(ImageDataset([(p, 0) for p in paths])).images == 6
    a.save(tmp_path / "stats.json")
    assert Stats.load(tmp_path / "stats.json") == a
    with pytest.raises(FileNotFoundError):
        Stats.load(tmp_path / "none.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError):
        Stats.load(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="none of the 1 images"):
        compute_stats([str(tmp_path / "bad.png")])


# ------------------------------------------------------------------------------------------------ collate


def test_collate_and_collate_list():
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 6)
    images, labels, bad = collate([(a, 1, "a"), (None, 2, "x"), (a, 0, "c")])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 0] and bad == ["x"]
    images, labels, bad = collate([(None, 2, "x")])
    assert images.shape[0] == 0 and labels.shape == (0,) and bad == ["x"]
    with pytest.raises(ValueError, match="collate_list"):
        collate([(a, 1, "a"), (b, 1, "b")])
    images, labels, bad = collate_list([(a, 1, "a"), (b, 2, "b"), (None, 0, "z")])
    assert [x.shape for x in images] == [a.shape, b.shape] and labels.tolist() == [1, 2] and bad == ["z"]


# --------------------------------------------------------------------------------- batched (GPU) path on CPU


def test_batched_path_equals_cpu_path(tmp_path):
    paths = [save(tmp_path / f"{i}.jpg", photo(30 + 7 * i, 50 - 3 * i, seed=i), "JPEG") for i in range(5)]
    paths.append(save(tmp_path / "x.png", photo(33, 33, seed=9)))
    stats = Stats(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), eigval=IMAGENET_STATS.eigval, eigvec=IMAGENET_STATS.eigvec)
    t = TrainTransform(stats, crop_size=32, scale=(32, 64), divide_std=True)
    params = [t.sample(torch.Generator().manual_seed(100 + i)) for i in range(len(paths))]
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    images = decode_batch(datas, "cpu", [str(p) for p in paths])
    batched = augment_batch(images, params, t)
    one_by_one = torch.stack([t(p, torch.Generator().manual_seed(100 + i)) for i, p in enumerate(paths)])
    assert batched.shape == (6, 3, 32, 32) and torch.equal(batched, one_by_one)
    whole = augment_batch(images, [AugParams(40)] * len(images), EvalTransform(stats, 40, divide_std=True))
    assert all(torch.equal(x, EvalTransform(stats, 40, divide_std=True)(p)) for x, p in zip(whole, paths))


def test_batched_path_statistics_match():
    # Same seeds, same parameters (the shared draw_params); the batched flips and colour shifts follow them.
    t = TrainTransform(IMAGENET_STATS, crop_size=8, scale=(8, 12))
    ramp = torch.arange(12, dtype=torch.uint8)[None, None, :].expand(3, 12, 12) * 20  # brighter to the right
    params = [t.sample(torch.Generator().manual_seed(s)) for s in range(400)]
    out = augment_batch([ramp] * len(params), params, t)
    assert torch.equal(out[:4], torch.stack([t.apply(ramp, p) for p in params[:4]]))
    flipped = (out[:, 0, :, -1] < out[:, 0, :, 0]).all(1)
    assert flipped.tolist() == [p.flip for p in params] and abs(flipped.float().mean() - 0.5) < 0.1
    # on a constant image the output minus the normalised pixel is exactly the colour shift of each alpha
    flat = torch.full((3, 10, 10), 100, dtype=torch.uint8)
    out = augment_batch([flat] * len(params), params, t)
    shift = out[:, :, 0, 0] - (100 / 255 - torch.tensor(IMAGENET_STATS.mean))
    expect = torch.tensor([colour_shift(p.alpha, t.eigval, t.eigvec) for p in params], dtype=torch.float32)
    assert torch.allclose(shift, expect, atol=1e-6)
    # projected on the principal components, the shifts are alpha * eigval with alpha ~ N(0, 0.1)
    alpha = (shift.double() @ torch.tensor(t.eigvec, dtype=torch.float64)) / torch.tensor(t.eigval)
    assert torch.allclose(alpha.std(0), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.15)


def test_decode_batch_handles_bad_and_mixed_inputs(tmp_path, caplog):
    good = save(tmp_path / "a.jpg", photo(20, 30), "JPEG")
    cmyk = save(tmp_path / "c.jpg", photo(20, 30), "JPEG", mode="CMYK")
    png = save(tmp_path / "p.png", photo(11, 12))
    trunc = good.read_bytes()[:200]
    datas = [
        torch.frombuffer(bytearray(b), dtype=torch.uint8)
        for b in (good.read_bytes(), trunc, cmyk.read_bytes(), png.read_bytes(), b"not an image")
    ]
    with caplog.at_level(logging.WARNING, logger="vggnet.data"):
        out = decode_batch(datas + [None], "cpu", ["a", "trunc", "c", "p", "text", "none"])
    assert [x is None for x in out] == [False, True, False, False, True, True]
    assert torch.equal(out[0], load_image(good)) and torch.equal(out[3], load_image(png))
    assert "trunc" in caplog.text and "text" in caplog.text


def test_gpu_loader_on_cpu_matches_dataloader(tmp_path):
    root = tree(tmp_path / "d", {"a": 4, "b": 3}, size=(24, 30), fmt="JPEG")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    samples, _ = scan_folder(root)
    t = TrainTransform(None, crop_size=16, scale=(16, 32), colour_std=0)
    sampler = SeededSampler(len(samples), seed=1)
    ref = list(DataLoader(ImageDataset(samples, t), batch_size=3, sampler=sampler, collate_fn=collate))
    got = list(GPULoader(samples, t, sampler, batch_size=3, device="cpu", num_workers=0))
    assert len(got) == len(ref) == 3
    for (x, y, bad), (rx, ry, rbad) in zip(got, ref):
        assert torch.equal(x, rx) and torch.equal(y, ry) and bad == rbad
    assert sum(len(b) for _, _, b in got) == 1
    item = EncodedDataset(samples, t)[(0, 5)]
    assert item[3] == t.sample(torch.Generator().manual_seed(5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_and_augment_match_cpu(tmp_path):
    paths = [save(tmp_path / f"{i}.jpg", photo(200 + 9 * i, 260, seed=i), "JPEG", quality=90) for i in range(8)]
    t = TrainTransform(IMAGENET_STATS, crop_size=128, scale=(128, 256))
    params = [t.sample(torch.Generator().manual_seed(i)) for i in range(len(paths))]
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    images = decode_batch(datas, "cuda")
    assert all(x.is_cuda and x.dtype == torch.uint8 for x in images)
    out = augment_batch(images, params, t)
    ref = torch.stack([t(p, torch.Generator().manual_seed(i)) for i, p in enumerate(paths)])
    # nvJPEG's IDCT and the float resampling differ from libjpeg-turbo and the uint8 kernel by a few levels
    assert out.is_cuda and (out.cpu() - ref).abs().mean() < 3 / 255
