"""The CUDA paths of the training loop, tested on the CPU (issue 16): no host sync per step on a terminal, one
compiled graph over epochs with validation and shrunk batches, no DDP hang on an all-unreadable micro-batch,
the deterministic and resume set-up."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from vggnet import create_model
from vggnet.config import TrainConfig, resolve
from vggnet.runtime import Dist

T = importlib.import_module("vggnet.training")
loop_mod = importlib.import_module("vggnet.training.loop")  # where the progress bar's redraw interval is read


def tiny(seed: int = 0):
    return create_model(
        "A", num_classes=2, width=1 / 16, fc_width=16, crop_size=32, dropout=0.0, init="kaiming", seed=seed
    )


def batches(n: int, size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 2, (size,), generator=g), []) for _ in range(n)
    ]


class CountReads(TorchFunctionMode):
    """Counts the tensor reads that wait for the device: item, bool, float, int, tolist, cpu."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu"}

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def run_epoch(tmp_path: Path, tty: bool, data, model=None, **cfg_kw):
    model = model or tiny()
    cfg = TrainConfig(arch="A", crop_size=32, scale_min=32, scale_max=32, batch_size=4, **cfg_kw)
    plan = T.BatchPlan(4 * len(data), 4, 1, 0, 1, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    log = T.Logger(tmp_path, True, False)
    log.tty = tty
    counter = CountReads()
    with counter:
        loss = T.train_one_epoch(
            model,
            iter(data),
            opt,
            cfg,
            plan,
            T.Progress(0, 0, 0),
            torch.device("cpu"),
            contextlib.nullcontext,
            log,
            set(),
            lambda: None,
        )
    log.close()
    return counter.n, loss, model


def test_terminal_run_reads_the_device_no_more_than_a_redirected_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop_mod, "PROGRESS_SECONDS", 0.0)  # the worst case: a redraw after every step
    data = batches(6)
    redirected, loss_a, a = run_epoch(tmp_path, False, data, log_every=100)
    capsys.readouterr()
    terminal, loss_b, b = run_epoch(tmp_path, True, data, log_every=100)
    out = capsys.readouterr().out
    assert out.count("\r") >= 5  # the progress line was redrawn at (almost) every step
    assert terminal == redirected  # ... without a single extra read of the device
    assert redirected <= 4  # the finiteness check and the loss at the epoch's end, not per step
    assert loss_a == loss_b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_host_copy_shows_the_value_without_waiting():
    h = T.HostCopy(torch.device("cpu"))
    assert h.poll() != h.poll()  # NaN before the first copy
    h.request(torch.tensor(2.5))
    assert h.poll() == 2.5


def test_padded_batch_gives_the_gradient_of_the_readable_images(tmp_path):
    x, y, _ = batches(1, 4)[0]
    ref = tiny()
    F.cross_entropy(ref(x[:3]), y[:3]).backward()
    # 3 readable images of 4: the step pads with a copy that weighs 0
    _, loss, stepped = run_epoch(tmp_path, False, [(x[:3], y[:3], ["bad.jpg"])], log_every=1)
    assert loss == pytest.approx(F.cross_entropy(tiny()(x[:3]), y[:3]).item(), rel=1e-6)
    manual = tiny()
    opt = torch.optim.SGD(manual.parameters(), lr=0.01, momentum=0.9)
    F.cross_entropy(manual(x[:3]), y[:3]).backward()
    opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(stepped.parameters(), manual.parameters()))
    images, labels, mask = T.pad_batch(torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), 4, 32)
    assert images.shape == (4, 3, 32, 32) and not mask.any() and labels.shape == (4,)


def test_all_unreadable_micro_batch_leaves_batch_norm_statistics_alone(tmp_path):
    model = create_model("A", num_classes=2, width=1 / 16, fc_width=16, crop_size=32, batch_norm=True, seed=0)
    before = [b.clone() for b in model.buffers()]
    empty = (torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    _, loss, model = run_epoch(tmp_path, False, [empty], model=model, log_every=1)
    assert loss == 0.0 and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """train/ with one unreadable file per class (so batches shrink), val/ whose 5 images leave a last batch of 1."""
    root = tmp_path_factory.mktemp("split")
    g = torch.Generator().manual_seed(0)
    for part, n in (("train", 7), ("val", 3)):
        for c, colour in enumerate([(200, 60, 60), (60, 60, 200)]):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n if part == "train" or c == 0 else 2):
                base = torch.tensor(colour, dtype=torch.float32)[:, None, None]
                img = (base + 60 * torch.randn(3, 36, 40, generator=g)).clamp(0, 255).byte()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
            if part == "train":
                (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_compiled_step_compiles_once_over_epochs_with_validation(split_folder, tmp_path, monkeypatch):
    """Two epochs of training (batches shrunk by unreadable files) and validation (eval mode, a last batch of 1)
    through torch.compile with a graph-counting backend (dynamo only, no code generation): one graph."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(
        importlib.import_module("vggnet.training.run"),
        "compile_model",
        lambda model, cfg, device: torch.compile(model, backend=counter),
    )
    cfg = resolve(
        dict(
            arch="A",
            width=1 / 16,
            fc_width=16,
            crop_size=32,
            scale_min=32,
            scale_max=36,
            data=str(split_folder),
            batch_size=4,
            epochs=2,
            workers=0,
            device="cpu",
            log_every=1,
            tensorboard=False,
            stats_images=8,
            init="kaiming",
            dropout=0.5,
            out=str(tmp_path / "run"),
        )
    )
    run = T.train(cfg)
    assert (run / "bad_files.txt").read_text().count("broken.png") == 2  # both shrank a batch
    assert counter.frame_count == 1
    torch._dynamo.reset()


def _ddp_empty_worker(rank: int, port: int, out: str):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        model = torch.nn.parallel.DistributedDataParallel(tiny())
        data = batches(3, 2, seed=rank)
        if rank == 1:  # every image of this rank's first micro-batch was unreadable
            data[0] = (torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), ["a.jpg", "b.jpg"])
        cfg = TrainConfig(arch="A", crop_size=32, scale_min=32, scale_max=32, batch_size=4, log_every=1)
        plan = T.BatchPlan(12, 4, 2, rank, 1, 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        log = T.Logger(Path(out), False, False)
        T.train_one_epoch(
            model,
            iter(data),
            opt,
            cfg,
            plan,
            T.Progress(0, 0, 0),
            torch.device("cpu"),
            contextlib.nullcontext,
            log,
            set(),
            lambda: None,
        )
        torch.save(model.module.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_rank_with_only_unreadable_images_stays_in_the_all_reduce(tmp_path):
    """2 gloo processes; rank 1's first micro-batch is empty. Both finish (no watchdog timeout) with equal weights."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_empty_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], tiny().state_dict()[k]) for k in a)  # it trained


def test_deterministic_on_cuda_sets_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: None)  # process-global: not in a test
    T.setup_backends(TrainConfig(deterministic=True), "cpu")
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    benchmark = torch.backends.cudnn.benchmark
    try:
        T.setup_backends(TrainConfig(deterministic=True), "cuda")
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.backends.cudnn.benchmark is False
        T.setup_backends(TrainConfig(), "cuda")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = benchmark


def test_resume_on_a_machine_with_fewer_gpus_restores_the_gpus_it_has(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(device))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("would fail for GPU 1"))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)] * 2)
    state = T.rng_state()  # saved on 2 GPUs
    assert len(state["cuda"]) == 2
    T.set_rng_state(state)
    assert calls == [0]


def test_validation_through_the_gpu_path_equals_the_cpu_path(split_folder):
    """On CUDA validation takes the GPU loader (nvJPEG, centre crop on the device); on the CPU both agree."""
    from vggnet.data import EvalTransform, ImageDataset, scan_folder

    samples, _ = scan_folder(split_folder / "val")
    ds = ImageDataset(samples, EvalTransform(None, 36, 32))
    cfg = TrainConfig(arch="A", crop_size=32, scale_min=32, scale_max=40, batch_size=4)
    model, cpu, d = tiny(), torch.device("cpu"), Dist()
    got = {
        kind: T.validate(
            model, ds, cfg, cpu, contextlib.nullcontext, d, set(), T.make_val_loader(cfg, ds, d, 0, cpu, kind)
        )
        for kind in ("gpu", "cpu")
    }
    assert got["gpu"] == got["cpu"] and got["cpu"]["val_images"] == 5
    assert type(T.make_val_loader(cfg, ds, d, 0, cpu, "gpu")).__name__ == "GPULoader"


def test_shared_memory_check_names_the_size_and_the_fix(split_folder, monkeypatch):
    import shutil

    from vggnet.data.shm import SharedMemoryError

    samples = [(str(p), 0) for p in sorted((split_folder / "train").rglob("*.png"))]
    docker = shutil._ntuple_diskusage(64 * 2**20, 0, 64 * 2**20)  # Docker's default /dev/shm: 64 MB
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: docker)
    # the CPU path: 8 workers x 4 batches of 256 float32 224-crops (154 MB each) cannot fit
    with pytest.raises(SharedMemoryError, match=r"--loader cpu with 8 workers.*/dev/shm has 0.06 GiB free.*--shm-size"):
        T.check_loader_memory("cpu", samples, 256, 224, 8)
    T.check_loader_memory("cpu", samples, 256, 224, 0)  # no workers: no shared memory
    T.check_loader_memory("gpu", samples, 4, 224, 8)  # the GPU path holds the files' bytes: a few KB here
    with pytest.raises(SharedMemoryError):
        T.check_loader_memory("gpu", samples * 1000, 10**6, 224, 8)


def test_the_run_summary_counts_the_gpu_paths_fallbacks():
    from collections import Counter
    from types import SimpleNamespace

    train_loader = SimpleNamespace(counts=Counter(cpu=2, refused=1, splits=4))
    val_loader = SimpleNamespace(counts=Counter(cpu=1))
    text = T.fallback_note(train_loader, val_loader, object())  # a DataLoader of the CPU path has no counts
    assert (
        text == "; GPU data path: 4 images decoded on the CPU (3 not RGB or grey JPEGs, 1 refused by the device "
        "decoder after 4 failed batched calls)"
    )
    assert T.fallback_note(SimpleNamespace(counts=Counter())) == ""
