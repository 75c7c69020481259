"""The GPU data backend run on the CPU: the threaded prefetch pipeline, the packed worker batches, the loader
choice, and training through either backend giving the same weights (the same (index, seed) keys)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.config import TrainConfig, resolve
from vggnet.data import ImageDataset, TrainTransform, collate, scan_folder
from vggnet.data.gpu import EncodedDataset, GPULoader, background, collate_encoded
from vggnet.train import BatchPlan, make_loader, make_train_loader, pick_loader, train
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
    for i, x in enumerate(stage2):
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
    loader = GPULoader(samples, t, batch_sampler=plan, device="cpu", num_workers=0, channels_last=True,
                       prefetch=prefetch)  # fmt: skip
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
    loader, kind = make_train_loader(TrainConfig(crop_size=32, scale_min=32, scale_max=32), ds, plan, 0,
                                     torch.device("cpu"))  # fmt: skip
    assert kind == "cpu" and loader.collate_fn is collate


def test_training_through_either_backend_gives_the_same_weights(jpegs, tmp_path, capsys):
    def run(loader):
        cfg = resolve(dict(
            arch="A", width=1 / 16, fc_width=16, crop_size=32, scale_min=32, scale_max=48, data=str(jpegs),
            val_fraction=0.2, batch_size=8, epochs=2, workers=0, device="cpu", log_every=1, tensorboard=False,
            stats_images=16, init="kaiming", dropout=0.0, out=str(tmp_path / loader), loader=loader,
        ))  # fmt: skip
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
