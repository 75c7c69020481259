"""Fine-tuning in one command (issue 23): the net and input taken from --init-from's source, a contradicting
--arch refused, the fine-tuning preset recorded and overridable, --freeze (frozen layers bit-identical after an
epoch, batch norm in eval mode), --head-lr-mult in the optimizer's groups, and the resume of a frozen run."""

import json

import pytest
import torch
from _tiny_runs import same, weights

import vggnet
from vggnet.cli import main
from vggnet.config import FINETUNE_PRESET, TrainConfig, toml_text
from vggnet.training import freeze, resolve_config, train
from vggnet.training.checkpoints import latest_checkpoint, load_checkpoint
from vggnet.training.finetune import param_groups
from vggnet.weights import save_weights, to_torchvision

TINY = dict(width=1 / 16, fc_width=16, crop_size=32)


def _opts(data, out, source, **kw):
    """A fine-tuning run of a few steps on the CPU; the net comes from ``source``."""
    values = dict(
        init_from=str(source),
        data=str(data),
        out=str(out),
        val_fraction=0.2,
        batch_size=8,
        epochs=1,
        workers=0,
        device="cpu",
        log_every=1,
        tensorboard=False,
        stats_images=16,
        scale_min=32,
        scale_max=36,
    )
    values.update(kw)
    return values


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Weights to fine-tune: a bare torchvision-layout state dict of a tiny vgg11_bn with 5 classes (no
    convention, no architecture in the file), and a fabricated run folder of a tiny net A on other data."""
    root = tmp_path_factory.mktemp("sources")
    bn = vggnet.create_model("vgg11_bn", num_classes=5, init="kaiming", seed=1, **TINY)
    with torch.no_grad():  # running statistics that a training step in train mode would change
        for m in bn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(to_torchvision(bn), root / "bn.pth")
    run = root / "run_a"
    run.mkdir()
    a = vggnet.create_model("A", num_classes=2, init="kaiming", seed=2, **TINY)
    save_weights(a, run / "model.safetensors")
    cfg = TrainConfig(arch="A", data=str(root / "other"), init="kaiming", scale_min=32, scale_max=40, **TINY)
    (run / "config.toml").write_text(toml_text(cfg.to_dict()))
    (run / "classes.json").write_text(json.dumps(["x", "y"]))
    return dict(bn=root / "bn.pth", run=run)


def test_the_net_and_input_come_from_the_source(sources, folder, tmp_path):
    cfg = resolve_config(_opts(folder, tmp_path / "r", sources["bn"], scale_min=None, scale_max=None))
    assert (cfg.arch, cfg.batch_norm, cfg.width, cfg.fc_width, cfg.crop_size) == ("A", True, 1 / 16, 16, 32)
    assert (cfg.scale_min, cfg.scale_max) == (37, 37)  # the paper's 256 / 224 of a file that records no scale
    assert cfg.pixel_range == 1 and cfg.finetune_preset == "on"
    named = resolve_config(dict(init_from="torchvision:vgg16_bn", data=str(folder)))  # a table entry: no download
    assert (named.arch, named.batch_norm, named.crop_size, named.scale_min, named.normalize) == (
        "D",
        True,
        224,
        256,
        "imagenet",
    )
    run = resolve_config(dict(init_from=str(sources["run"]), data=str(folder)))
    assert (run.arch, run.width, run.scale_min, run.scale_max, run.normalize) == ("A", 1 / 16, 32, 40, "mean")


def test_a_file_of_ours_gives_its_convention_and_scale(folder, tmp_path):
    from vggnet.convention import Convention, parse_normalize
    from vggnet.pretrained import IMAGENET_MEAN, IMAGENET_STD, make_cfg

    m = vggnet.create_model("vgg13", num_classes=3, **TINY)
    mine = Convention((25.5, 51.0, 76.5), pixel_range=255)  # the authors' kind: 0-255 pixels minus a mean
    m.pretrained_cfg = make_cfg(mine, resize=40, crop=32)
    cfg = resolve_config(dict(init_from=str(save_weights(m, tmp_path / "m.safetensors")), data=str(folder)))
    assert (cfg.arch, cfg.scale_min, cfg.scale_max, cfg.pixel_range) == ("B", 40, 40, 255)
    assert parse_normalize(cfg.normalize, pixel_range=cfg.pixel_range) == mine
    m.pretrained_cfg = make_cfg(Convention(IMAGENET_MEAN, IMAGENET_STD), resize=36, crop=32)
    cfg = resolve_config(dict(init_from=str(save_weights(m, tmp_path / "i.safetensors")), data=str(folder)))
    assert (cfg.normalize, cfg.pixel_range, cfg.scale_min) == ("imagenet", 1, 36)


def test_a_contradicting_arch_is_refused(sources, folder, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"holds net D, but --arch vgg11 asks for net A: leave --arch out"):
        resolve_config(dict(init_from="torchvision:vgg16", arch="vgg11", data=str(folder)))
    with pytest.raises(ValueError, match=r"holds net A-BN, but --arch A asks for net A"):
        resolve_config(_opts(folder, tmp_path / "r", sources["bn"], arch="A"))
    with pytest.raises(ValueError, match=r"of width 0.0625, but --width 0.25"):
        resolve_config(_opts(folder, tmp_path / "r", sources["bn"], width=0.25))
    # the same net named another way, and net A into a deeper net (the paper's staged init), are no contradiction
    assert resolve_config(_opts(folder, tmp_path / "r", sources["bn"], arch="vgg11_bn")).batch_norm
    staged = resolve_config(dict(init_from=str(sources["run"]), arch="D", data=str(sources["run"].parent / "other")))
    assert staged.arch == "D" and staged.finetune_preset == "off"
    assert staged.lr == TrainConfig.lr  # a run on the same data: the paper's recipe, not the preset
    rc = main(["train", "--init-from", "torchvision:vgg16", "--arch", "vgg13", "--data", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and "leave --arch out" in err and len(err.strip().splitlines()) == 1


def test_net_a_in_a_bare_file_into_a_deeper_net_is_the_staged_init(folder, tmp_path):
    """A torchvision-layout file of net A (no metadata) into net B: the paper's staged init, as for a run folder
    or a file of ours (finetune allows it; the loader once refused it as weights that do not fit). With another
    number of classes, a one-line error naming the layer."""
    from vggnet.training.setup import init_from

    class Log:
        def line(self, text):
            self.text = text

    a = vggnet.create_model("A", num_classes=2, init="kaiming", seed=3, **TINY)
    torch.save(to_torchvision(a), tmp_path / "a.pth")
    b = vggnet.create_model("B", num_classes=2, init="kaiming", seed=4, **TINY)
    log = Log()
    init_from(b, str(tmp_path / "a.pth"), log, TrainConfig(arch="B", **TINY))
    assert log.text.startswith("init from net A") and "classifier.6" in log.text
    for key in ("features.0.weight", "classifier.0.weight", "classifier.6.weight"):  # conv1_1, fc6, fc8 copied
        assert torch.equal(b.state_dict()[key], a.state_dict()[key]), key
    other = vggnet.create_model("A", num_classes=5, init="kaiming", seed=3, **TINY)
    torch.save(to_torchvision(other), tmp_path / "a5.pth")
    with pytest.raises(ValueError, match=r"layer classifier.6 has shape \(2, 16\) here but \(5, 16\) in net A"):
        init_from(b, str(tmp_path / "a5.pth"), log, TrainConfig(arch="B", **TINY))


def test_the_preset_applies_to_other_labels_only_and_flags_override_it(sources, folder, tmp_path):
    cfg = resolve_config(_opts(folder, tmp_path / "r", sources["run"], lr=0.005, epochs=None))
    assert cfg.finetune_preset == "on" and cfg.lr == 0.005  # a flag over the preset
    assert {k: getattr(cfg, k) for k in FINETUNE_PRESET if k != "lr"} == {
        k: v for k, v in FINETUNE_PRESET.items() if k != "lr"
    }
    off = resolve_config(_opts(folder, tmp_path / "r", sources["run"], finetune_preset="off", epochs=None))
    assert off.finetune_preset == "off" and (off.lr, off.epochs, off.head_lr_mult) == (0.01, 74, 1.0)
    same_data = str(sources["run"].parent / "other")  # the data the source run was trained on
    assert resolve_config(dict(init_from=str(sources["run"]), data=same_data)).finetune_preset == "off"
    forced = resolve_config(dict(init_from=str(sources["run"]), data=same_data, finetune_preset="on"))
    assert (forced.finetune_preset, forced.lr, forced.head_lr_mult) == ("on", 1e-3, 10.0)
    with pytest.raises(ValueError, match="--freeze conv5_3: net A has no such layer"):
        resolve_config(dict(data=str(folder), freeze="conv5_3"))  # A's block 5 has two convs; no data scanned


def test_a_new_last_layer_gets_small_weights_whatever_init_says(sources):
    from vggnet.training.setup import init_from

    model = vggnet.create_model("vgg11_bn", num_classes=2, init="kaiming", **TINY)  # He: fc8 std 0.35 at fan-in 16
    lines = []
    log = type("Log", (), {"line": staticmethod(lines.append)})()
    init_from(model, str(sources["bn"]), log, TrainConfig(arch="vgg11_bn", **TINY))
    fc8 = model.get_classifier()
    assert "but the last" in lines[0] and fc8.weight.shape == (2, 16)
    assert torch.count_nonzero(fc8.bias) == 0 and 0 < fc8.weight.std() < 0.03  # N(0, 0.01^2), zero bias
    assert torch.equal(model.classifier[3].weight, torch.load(sources["bn"])["classifier.3.weight"])  # fc7: SOURCE's


def test_freeze_keeps_layers_bit_identical_and_bn_in_eval_mode(sources, folder, tmp_path):
    run = train(resolve_config(_opts(folder, tmp_path / "r", sources["bn"], freeze="conv4_2", lr=0.05)))
    text = (run / "config.toml").read_text()
    assert 'freeze = "conv4_2"' in text and 'finetune_preset = "on"' in text and "head_lr_mult = 10.0" in text
    before, after = torch.load(sources["bn"]), weights(run)
    net = vggnet.create_model("vgg11_bn", num_classes=2, **TINY)
    names = dict(zip([f"features.{i}." for i in range(len(net.features))], net.layer_names))
    cut = next(p for p, n in names.items() if n == "relu4_2")  # conv4_2, bn4_2, relu4_2: the last frozen
    idx = int(cut.split(".")[1])
    fixed = [k for k in after if k.startswith("features.") and int(k.split(".")[1]) <= idx]
    moved = [k for k in after if k not in fixed and not k.startswith("classifier.6.") and not k.endswith("tracked")]
    assert fixed and all(torch.equal(after[k], before[k]) for k in fixed)  # running statistics included
    assert all(not torch.equal(after[k], before[k]) for k in moved if k.endswith("weight"))
    assert after["classifier.6.weight"].shape == (2, 16)  # 5 classes there, 2 here: a new last layer
    opt = load_checkpoint(sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1])["optimizer"]
    groups = opt["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0] and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    n_trainable = sum(1 for k in after if k not in fixed and not k.endswith(("running_mean", "running_var", "tracked")))
    assert sum(len(g["params"]) for g in groups) == n_trainable  # frozen parameters are not in the optimizer


def test_frozen_batch_norm_stays_in_eval_mode_and_groups_follow_the_multiplier():
    model = vggnet.create_model("vgg11_bn", num_classes=3, **TINY)
    names = freeze(model, "features")
    assert names[-1] == "pool5" and all(not p.requires_grad for p in model.features.parameters())
    model.train()
    bns = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and model.classifier.training
    cfg = TrainConfig(arch="vgg11_bn", lr=0.002, head_lr_mult=5.0, freeze="features", **TINY)
    groups = param_groups(model, cfg)
    assert [(g["lr"], len(g["params"])) for g in groups] == [(0.002, 4), (0.01, 2)]
    assert len(param_groups(model, TrainConfig(arch="vgg11_bn", **TINY))) == 1  # no multiplier: one group
    with pytest.raises(ValueError, match=r"--freeze conv9_1: net A-BN has no such layer .*conv4_2"):
        freeze(vggnet.create_model("vgg11_bn", num_classes=3, **TINY), "conv9_1")


def test_a_frozen_run_resumes_and_refuses_another_freeze(sources, folder, tmp_path):
    opts = _opts(folder, tmp_path / "r", sources["bn"], freeze="features", epochs=2, max_steps=3)
    run = train(resolve_config(opts))
    with pytest.raises(ValueError, match=r"freeze \('features' -> 'conv3_2'\)"):
        train(dict(freeze="conv3_2"), resume=run)
    # the same command again continues the run (the preset resolves to the same values)
    run = train(resolve_config(dict(opts, max_steps=None)))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows if r["kind"] == "epoch") == 2
    before, after = torch.load(sources["bn"]), weights(run)
    assert same(
        {k: after[k] for k in after if k.startswith("features.")},
        {k: before[k] for k in before if k.startswith("features.")},
    )
    # and it ends where an uninterrupted run ends (fc8's group and its lr_mult came back from the checkpoint)
    whole = train(resolve_config(dict(opts, max_steps=None, out=str(tmp_path / "whole"))))
    assert same(weights(whole), after)


@pytest.mark.slow
def test_a_frozen_fine_tune_under_ddp_equals_one_process(sources, folder, tmp_path):
    """2 processes x 4 images (gloo) fine-tune with --freeze and --head-lr-mult as 1 process x 8 images does."""
    import torch.multiprocessing as mp
    from test_train import _ddp_worker, _free_port

    # no dropout: its masks differ between the processes by design (a per-rank seed), and the preset's 0.5 would
    # make the two runs differ by that alone
    opts = dict(freeze="conv3_2", max_steps=3, scale_max=32, dropout=0.0)
    one = train(resolve_config(_opts(folder, tmp_path / "one", sources["run"], **opts)))
    cfg = resolve_config(_opts(folder, tmp_path / "two", sources["run"], **opts))
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg), nprocs=2, join=True)
    a, b = (load_checkpoint(latest_checkpoint(r))["model"] for r in (one, tmp_path / "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    start = weights(sources["run"])
    assert all(torch.equal(a[k], start[k]) for k in ("features.0.weight", "features.8.weight"))  # conv1_1, conv3_2
    assert not torch.equal(a["features.11.weight"], start["features.11.weight"])  # conv4_1 trains


def test_the_command_line_takes_the_fine_tuning_flags(sources, folder, tmp_path):
    run = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--init-from",
            str(sources["bn"]),
            "--data",
            str(folder),
            "--freeze",
            "features",
            "--head-lr-mult",
            "5",
            "--finetune-preset",
            "on",
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--batch-size",
            "8",
            "--val-fraction",
            "0.2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--stats-images",
            "8",
            "--no-tensorboard",
            "--out",
            str(run),
        ]
    )
    text = (run / "config.toml").read_text()
    assert rc == 0 and 'freeze = "features"' in text and "head_lr_mult = 5.0" in text and "lr = 0.001" in text
    assert 'arch = "A"' in text and "batch_norm = true" in text and "crop_size = 32" in text
