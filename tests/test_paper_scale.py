"""The paper's scale (issue 10): the init's statistics, the pixel scale from a decoded image to the net's input,
and a cheap slice of benchmarks/paper_check.py (net A at full width, two steps, through the real CLI)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vggnet
from vggnet import runs
from vggnet.config import TrainConfig, from_dict, resolve
from vggnet.convention import Convention
from vggnet.data import EvalTransform, Stats, TrainTransform
from vggnet.init import PAPER_LITERAL_STD, PAPER_STD

ROOT = Path(__file__).resolve().parents[1]


def _weights(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


@pytest.mark.parametrize("scheme, std", [("paper", PAPER_STD), ("paper-literal", PAPER_LITERAL_STD)])
def test_paper_init_statistics(scheme, std):
    model = vggnet.create_model("A", num_classes=10, width=0.25, fc_width=256, init=scheme, seed=0)
    for m in _weights(model):
        w = m.weight.detach().double()
        assert abs(w.mean().item()) < 0.1 * std
        assert w.std().item() == pytest.approx(std, rel=0.05), f"{m}: std {w.std().item()}"
        assert torch.count_nonzero(m.bias) == 0
    # the default of create_model is the paper's: std 0.01
    default = vggnet.create_model("A", num_classes=10, width=0.25, fc_width=256, seed=0)
    assert _weights(default)[3].weight.std().item() == pytest.approx(PAPER_STD, rel=0.05)


@pytest.mark.slow
def test_full_width_net_a_starts_at_ln_classes_with_the_default_reading():
    """Net A at full width, a 224 input on the 0-255 scale minus a mean: the paper's std 0.01 gives a loss of
    ln(classes) (the logits start near 0); the literal std 0.1 starts orders of magnitude above it."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 224, 224, generator=g) * 255 - 120  # pixels 0-255 minus a mean RGB
    y = torch.tensor([0, 1])
    losses = {}
    for scheme in ("paper", "paper-literal"):
        model = vggnet.create_model("A", num_classes=1000, dropout=0.0, init=scheme, seed=0)
        with torch.no_grad():
            losses[scheme] = F.cross_entropy(model(x), y).item()
        del model
    assert losses["paper"] == pytest.approx(math.log(1000), abs=0.01)
    assert losses["paper-literal"] > 1000 * math.log(1000)


def test_pixel_range_follows_the_init_unless_given():
    assert TrainConfig().pixel_range == 255  # the paper's init and the authors' 0-255 pixels
    assert TrainConfig(init="paper-literal").pixel_range == 255
    assert TrainConfig(init="kaiming").pixel_range == 1
    assert TrainConfig(init="glorot", pixel_range=255).pixel_range == 255
    assert resolve({"data": "mnist"}).pixel_range == 1  # the demo preset uses Kaiming
    with pytest.raises(ValueError, match="pixel_range"):
        TrainConfig(pixel_range=2)
    # a config saved before the option existed fed [0, 1] pixels
    assert from_dict({"arch": "A"}).pixel_range == 1


def _png(path, rng):
    a = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return torch.from_numpy(a).permute(2, 0, 1)


@pytest.mark.parametrize("pixel_range", [255, 1])
def test_pixel_scale_from_decoded_image_to_net_input(tmp_path, pixel_range):
    """A PNG (exact pixels) through the eval transform the run would use: pixels - 255 mean, or pixels / 255 - mean."""
    pixels = _png(tmp_path / "x.png", np.random.default_rng(0)).float()
    stats = Stats(
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2),
        eigval=(0.1, 0.01, 0.001),
        eigvec=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    )
    conv = Convention.of_run(stats, "mean", pixel_range)
    x = EvalTransform(stats, size=40, crop_size=None, convention=conv)(tmp_path / "x.png")
    mean = torch.tensor(stats.mean)[:, None, None]
    want = pixels - 255 * mean if pixel_range == 255 else pixels / 255 - mean
    torch.testing.assert_close(x, want, atol=1e-4, rtol=1e-5)
    # training: the colour shift is on the same scale (AlexNet's on 0-255 pixels: 255 x the [0, 1] shift)
    tf = TrainTransform(stats, crop_size=40, scale=40, flip=False, colour_std=0.1, convention=conv)
    params = tf.sample(torch.Generator().manual_seed(3))
    xt = tf.apply(pixels.byte(), params)
    shift = torch.tensor(vggnet.data.transforms.colour_shift(params.alpha, stats.eigval, stats.eigvec))[:, None, None]
    _, _, top, left = vggnet.data.transforms.crop_offsets(40, 52, params, 40)
    crop = pixels[:, top : top + 40, left : left + 40]
    want_t = crop - 255 * (mean - shift) if pixel_range == 255 else crop / 255 - mean + shift
    torch.testing.assert_close(xt, want_t.float(), atol=1e-3, rtol=1e-5)
    # standardisation: the pixel range cancels out
    assert Convention.of_run(stats, "standardize", pixel_range) == Convention(stats.mean, stats.std)


def test_run_folder_records_the_pixel_range(tmp_path):
    """A trained run's folder says what its net was fed, and load_run hands evaluation the same normalisation."""
    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / "data" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            _png(tmp_path / "data" / f"c{c}" / f"{i}.png", rng)
    run = vggnet.train(
        dict(
            arch="A",
            width=1 / 16,
            fc_width=16,
            crop_size=32,
            scale_min=32,
            scale_max=32,
            data=str(tmp_path / "data"),
            val_fraction=0.2,
            batch_size=8,
            epochs=1,
            workers=0,
            device="cpu",
            tensorboard=False,
            stats_images=8,
            out=str(tmp_path / "run"),
        )
    )
    loaded = runs.load_run(run)
    assert loaded.config["pixel_range"] == 255 and loaded.config["init"] == "paper"
    torch.testing.assert_close(loaded.std, torch.full((3,), 1 / 255))
    # --init-from that run takes its input convention unless told otherwise (issue 23) ...
    from vggnet.training import resolve_config

    took = resolve_config(dict(arch="B", init="kaiming", init_from=str(run), data=str(tmp_path / "data")))
    assert took.pixel_range == 255
    # ... and another one, asked for, is refused, naming the flags to pass
    with pytest.raises(ValueError, match="--pixel-range 255"):
        vggnet.train(
            dict(
                arch="B",
                width=1 / 16,
                fc_width=16,
                crop_size=32,
                scale_min=32,
                scale_max=32,
                data=str(tmp_path / "data"),
                val_fraction=0.2,
                batch_size=8,
                epochs=1,
                workers=0,
                device="cpu",
                tensorboard=False,
                stats_images=8,
                out=str(tmp_path / "run2"),
                init="kaiming",
                pixel_range=1,
                init_from=str(run),
            )
        )


def _paper_check():
    spec = importlib.util.spec_from_file_location("paper_check", ROOT / "benchmarks" / "paper_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_paper_check_stage_table_and_order():
    pc = _paper_check()
    names = [s.name for s in pc.stages(None)]
    assert names[0] == "1-A-LRN-S256" and names.index("1-A-S256") < names.index("2-D-S256")
    froms = {s.name: s.init_from for s in pc.stages(None)}
    assert froms["1-A-S256"] == "" and froms["2-E-S256"] == "1-A-S256"
    assert froms["3-D-S384"] == "2-D-S256" and froms["4-D-S256-512"] == "3-D-S384"
    r = pc.learned(pc.Result("x", losses=[1.4, 1.0, 0.2, 0.1, 0.1], ok=True), classes=4)
    assert r.ok
    r = pc.learned(pc.Result("x", losses=[1.4, 1.38, 1.37], ok=True), classes=4)
    assert not r.ok and "did not learn" in r.why


def test_paper_check_learning_rows_scale_the_rate_with_the_batch():
    """The learning rows' one rule: lr = 1e-2 x B / 256 (linear scaling), the paper's 1e-2 at batch 256 on CUDA;
    the table's row names the batch and the rate."""
    pc = _paper_check()
    assert pc.learn_lr(256) == pytest.approx(1e-2)
    assert pc.learn_lr(32) == pytest.approx(1.25e-3)
    cpu, gpu = pc.parse_args([]), pc.parse_args(["--device", "cuda"])
    assert (cpu.learn_batch_size, cpu.learn_lr) == (32, pytest.approx(1.25e-3))
    assert (gpu.learn_batch_size, gpu.learn_lr) == (256, pytest.approx(1e-2))
    assert pc.parse_args(["--learn-batch-size", "8", "--learn-lr", "0.003"]).learn_lr == pytest.approx(3e-3)
    # on the CPU the learning rows wait for the GPU unless asked for (the init's plateau outlasts 30 minutes here)
    assert (cpu.learn, gpu.learn, pc.parse_args(["--learn"]).learn) == (False, True, True)


@pytest.mark.slow
def test_paper_check_cheap_slice(tmp_path, capsys):
    """Net A at full width (133M parameters), 224 crops of 500x375 JPEGs, the paper's augmentation, two SGD steps
    at lr 1e-2 through `vgg train --recipe recipes/imagenet/1-A-S256.toml`: finite, not exploding."""
    pc = _paper_check()
    code = pc.main(["--stages", "1-A-S256", "--steps", "2", "--batch-size", "2", "--no-learn", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    row = [line for line in out.splitlines() if line.startswith("| 1-A-S256 |")][-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2" and cells[-1] == "ok"
    first, last = float(cells[3]), float(cells[4])
    assert abs(first - math.log(4)) < 0.05 and math.isfinite(last)
