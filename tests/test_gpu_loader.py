"""The GPU data backend run on the CPU: the threaded prefetch pipeline, the packed worker batches, the loader
choice, and training through either backend giving the same weights (the same (index, seed) keys)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _tiny_runs import options
from PIL import Image

from vggnet.config import TrainConfig, resolve
from vggnet.data import EvalTransform, ImageDataset, TrainTransform, collate, gpu, scan_folder
from vggnet.data.gpu import EncodedDataset, GPULoader, augment_batch, background, collate_encoded
from vggnet.training import BatchPlan, make_loader, make_train_loader, pick_loader, train
from vggnet.weights import read_state_dict


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """Two classes of smooth colour photos as JPEGs (plus one broken file): the GPU path's input."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir()
        for i in range(12):
            low = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
            low[..., c * 2] = 220  # a class colour to learn
            h, w = (40, 52) if i % 3 else (52, 40)
            Image.fromarray(low).resize((w, h), Image.BICUBIC).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    (root / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    return root


def test_background_keeps_order_raises_and_stops():
    assert list(background(range(20), lambda x: x * x, 2, torch.device("cpu"))) == [x * x for x in range(20)]

    def fail(x):
        if x == 3:
            raise KeyError("item 3")
        return x

    got = []
    with pytest.raises(KeyError, match="item 3"):
        for x in background(range(10), fail, 2, torch.device("cpu")):
            got.append(x)
    assert got == [0, 1, 2]
    # a consumer that stops early: the thread (and the upstream stage's) is stopped and joined at once
    stage1 = background(iter(range(10**9)), lambda x: x, 2, torch.device("cpu"))
    stage2 = background(stage1, lambda x: -x, 2, torch.device("cpu"))
    for i, _ in enumerate(stage2):
        if i == 5:
            break
    stage2.close()
    assert not [t for t in threading.enumerate() if t.name == "vggnet-data"]


def test_encoded_batches_are_packed_into_one_tensor(jpegs):
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=(32, 40), colour_std=0)
    ds = EncodedDataset(samples, t)
    broken = next(i for i, (p, _) in enumerate(samples) if p.endswith("broken.jpg"))
    items = [ds[(i, 7 + i)] for i in (0, broken, 1)]
    batch = collate_encoded(items)
    assert batch.sizes[1] == 0 and batch.data.numel() == sum(batch.sizes)
    datas = batch.datas()
    assert datas[1] is None and torch.equal(datas[0], items[0][0]) and torch.equal(datas[2], items[2][0])
    assert batch.labels.tolist() == [it[1] for it in items] and batch.params == [it[3] for it in items]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_gpu_loader_with_batch_plan_equals_cpu_backend(jpegs, prefetch):
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=(32, 48), colour_std=0)
    plan = BatchPlan(len(samples), 8, world=1, rank=0, accum=2, seed=5)
    plan.set_epoch(1)
    ref = list(make_loader(ImageDataset(samples, t), plan, 0, torch.device("cpu")))
    loader = GPULoader(
        samples, t, batch_sampler=plan, device="cpu", num_workers=0, channels_last=True, prefetch=prefetch
    )
    got = list(loader)
    assert len(got) == len(ref) == 6  # 3 steps of 2 micro-batches of 4
    for (x, y, bad), (rx, ry, rbad) in zip(got, ref):
        assert torch.equal(x, rx) and torch.equal(y, ry) and bad == rbad
        assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="batch_sampler"):
        GPULoader(samples, t, sampler=[0], batch_size=2, batch_sampler=plan, device="cpu")


def test_gpu_loader_with_workers(jpegs):
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=(32, 48), colour_std=0)
    plan = BatchPlan(len(samples), 12, world=1, rank=0, accum=1, seed=1)
    ref = list(make_loader(ImageDataset(samples, t), plan, 0, torch.device("cpu")))
    got = list(GPULoader(samples, t, batch_sampler=plan, device="cpu", num_workers=2))
    assert all(torch.equal(x, rx) and torch.equal(y, ry) for (x, y, _), (rx, ry, _) in zip(got, ref))


def test_pick_loader(jpegs, tmp_path):
    samples, _ = scan_folder(jpegs)
    pngs = [(str(tmp_path / f"{i}.png"), 0) for i in range(4)]
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")  # a device object needs no GPU
    assert pick_loader("auto", cuda, samples) == "gpu"
    assert pick_loader("auto", cuda, pngs) == "cpu"
    assert pick_loader("auto", cpu, samples) == "cpu"
    assert pick_loader("gpu", cpu, pngs) == "gpu" and pick_loader("cpu", cuda, samples) == "cpu"
    with pytest.raises(ValueError, match="loader must be"):
        TrainConfig(loader="dali")


def test_make_train_loader_on_cpu(jpegs):
    samples, _ = scan_folder(jpegs)
    ds = ImageDataset(samples, TrainTransform(None, crop_size=32, scale=32, colour_std=0))
    plan = BatchPlan(len(samples), 8, 1, 0, 1, 0)
    cfg = TrainConfig(loader="gpu", crop_size=32, scale_min=32, scale_max=32)
    loader, kind = make_train_loader(cfg, ds, plan, 0, torch.device("cpu"))
    assert kind == "gpu" and isinstance(loader, GPULoader)
    loader, kind = make_train_loader(
        TrainConfig(crop_size=32, scale_min=32, scale_max=32), ds, plan, 0, torch.device("cpu")
    )
    assert kind == "cpu" and loader.collate_fn is collate


def test_training_through_either_backend_gives_the_same_weights(jpegs, tmp_path, capsys):
    def run(loader):
        cfg = resolve(options(jpegs, tmp_path / loader, scale_max=48, dropout=0.0, loader=loader))
        out = train(cfg)
        return read_state_dict(out / "model.safetensors")[0], out

    (a, run_a), (b, run_b) = run("cpu"), run("gpu")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = (run_a / "bad_files.txt").read_text()
    assert "broken.jpg" in bad and (run_b / "bad_files.txt").read_text() == bad
    printed = capsys.readouterr().out
    assert "cpu data path" in printed and "gpu data path" in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_loader_on_cuda_matches_cpu_backend(jpegs):
    from vggnet.data import IMAGENET_STATS

    samples, _ = scan_folder(jpegs)
    t = TrainTransform(IMAGENET_STATS, crop_size=32, scale=(32, 48))
    plan = BatchPlan(len(samples), 8, world=1, rank=0, accum=1, seed=3)
    ref = list(make_loader(ImageDataset(samples, t), plan, 0, torch.device("cpu")))
    got = list(GPULoader(samples, t, batch_sampler=plan, device="cuda", num_workers=2, channels_last=True))
    assert len(got) == len(ref)
    for (x, y, bad), (rx, ry, rbad) in zip(got, ref):
        assert x.is_cuda and y.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y.cpu(), ry) and bad == rbad
        # nvJPEG's IDCT and the float resampling differ from libjpeg-turbo and the uint8 kernel by a few levels
        assert (x.cpu() - rx).abs().mean() < 3 / 255


# ---- issue 16: the GPU path's overheads and fallbacks, on the CPU ----------------------------------------------


def test_prefetch_zero_is_refused_on_cuda(jpegs):
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=32, colour_std=0)
    with pytest.raises(ValueError, match="prefetch >= 1 on CUDA"):
        GPULoader(samples, t, batch_size=4, device=torch.device("cuda", 0), prefetch=0)  # a device object: no GPU


def test_streams_are_made_once_per_loader(jpegs, monkeypatch):
    made = []
    real = gpu.new_stream
    monkeypatch.setattr(gpu, "new_stream", lambda device: made.append(device) or real(device))
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=32, colour_std=0)
    loader = GPULoader(samples, t, batch_size=8, device="cpu", num_workers=0)
    for _ in range(3):  # three epochs
        assert len(list(loader)) == 4
    assert len(made) == 2  # the decode stage's and the augment stage's, not two an epoch


def test_workers_compute_the_route_and_the_crop_window(jpegs, tmp_path):
    samples, _ = scan_folder(jpegs)
    t = TrainTransform(None, crop_size=32, scale=(32, 48), colour_std=0)
    data, label, path, params, head = EncodedDataset(samples, t)[(0, 11)]
    h, w = Image.open(path).size[::-1]
    assert head.route == "gpu" and head.window == t.window(h, w, params)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (10, 20, 30, 0)).save(cmyk)
    png = tmp_path / "p.png"
    Image.new("RGB", (40, 40)).save(png)
    ds = EncodedDataset([(str(cmyk), 0), (str(png), 0)], EvalTransform(None, 40, 32))
    assert [ds[i][4].route for i in range(2)] == ["cpu", "cpu"] and ds[0][4].window is None


def test_cmyk_goes_straight_to_the_cpu_and_a_failing_batch_is_split_in_halves(jpegs, tmp_path, monkeypatch):
    """A stand-in for nvJPEG that refuses CMYK and one broken file: the CMYK file never reaches it (the header
    routes it), the broken one is found by halving (log2 calls, not one per image), and all are counted."""
    samples, _ = scan_folder(jpegs)
    samples = [s for s in samples if not s[0].endswith("broken.jpg")][:7]
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (48, 40), (10, 200, 30, 0)).save(cmyk)
    refused = tmp_path / "refused.jpg"
    refused.write_bytes(open(samples[0][0], "rb").read())
    samples = samples[:3] + [(str(refused), 1)] + samples[3:] + [(str(cmyk), 0)]
    refused.write_bytes(refused.read_bytes() + b"\x00")  # a copy of a good file, told apart by its size
    real, calls = gpu.decode_jpeg, []

    def fake(datas, mode, device):
        calls.append(len(datas))
        for d in datas:  # Pillow writes CMYK with an Adobe marker, not JFIF's
            if bytes(d[:4].tolist()) != b"\xff\xd8\xff\xe0" or d.numel() == refused.stat().st_size:
                raise RuntimeError("nvJPEG refuses this batch")
        return real(datas, mode=mode, device=device)

    monkeypatch.setattr(gpu, "decode_jpeg", fake)
    t = TrainTransform(None, crop_size=32, scale=32, colour_std=0)
    keys = [[(i, 100 + i) for i in range(len(samples))]]
    loader = GPULoader(samples, t, batch_sampler=keys, device="cpu", num_workers=0, prefetch=0)
    ((x, y, bad),) = list(loader)
    assert x.shape[0] == len(samples) and bad == []
    assert calls[0] == 8 and len(calls) == 1 + 2 * 3  # the batch of 8, then halves down to the refused file
    assert loader.counts == {"cpu": 1, "refused": 1, "splits": 3}
    assert "2 images decoded on the CPU (1 not RGB or grey JPEGs, 1 refused" in gpu.fallback_summary(loader.counts)
    ref = list(make_loader(ImageDataset(samples, t), keys, 0, torch.device("cpu")))[0]
    assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])


def test_crops_of_one_size_at_one_scale_share_a_resampling_call(monkeypatch):
    """Fixed-scale training on images of one size: a batch resamples in a few calls, with the per-image result."""
    from vggnet.data import transforms

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 75, 100), dtype=torch.uint8, generator=g) for _ in range(16)]
    t = TrainTransform(None, crop_size=32, scale=48, colour_std=0)
    params = [t.sample(torch.Generator().manual_seed(i)) for i in range(16)]
    calls = []
    real = transforms._resample
    monkeypatch.setattr(transforms, "_resample", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    batched = augment_batch(images, params, t)
    grouped = len(calls)
    one_by_one = torch.stack([t.apply(img, p) for img, p in zip(images, params)])
    assert torch.equal(batched, one_by_one)
    assert grouped <= 6 and sum(calls[:grouped]) == 16  # 16 calls before; crops at the far edges resample alone


def test_resized_crop_resamples_when_the_region_is_as_large_as_the_output():
    """torch's CPU kernel copies an axis whose output size equals its input size, whatever the scale: at
    S = 43 on a 40-row image (scale 1.075) the 32-row crop at the top reads exactly 32 source rows."""
    from vggnet.data import rescale, resized_crop
    from vggnet.data.transforms import crop_window

    img = torch.randint(0, 256, (3, 40, 52), generator=torch.Generator().manual_seed(0)).float()
    w = crop_window(40, 52, 43, 32, 0.0, 0.0)
    assert (w.y1 - w.y0, w.ky) == (32, 0)  # the case
    exact = rescale(img, 43)[:, :32, :32]  # exact where the region starts at the image's border
    assert torch.allclose(resized_crop(img, 43, 32, 0.0, 0.0), exact, atol=1e-3)
