"""`vgg eval / predict / fuse --weights`, `--normalize`, `vgg export --format onnx [--dense]` (checked in
onnxruntime at three sizes) and `vgg train --init-from` a served named source."""

import json

import pytest
import torch
from PIL import Image
from test_pretrained import served  # noqa: F401  the weights served from 127.0.0.1

import vggnet
import vggnet.pretrained as P
from vggnet.cli import main
from vggnet.convention import Convention
from vggnet.weights import save_weights, to_torchvision

TINY = dict(width=0.125, fc_width=64, crop_size=32)
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    g = torch.Generator().manual_seed(0)
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for i in range(2):
            img = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(img.numpy()).save(data / c / f"{i}.png")
    m = vggnet.create_model("vgg11", num_classes=3, init="kaiming", seed=0, **TINY)
    plain = root / "plain.pth"
    torch.save(to_torchvision(m), plain)  # a bare state dict: no input convention
    m.pretrained_cfg = P.make_cfg(
        Convention(P.IMAGENET_MEAN, P.IMAGENET_STD), source="test", num_classes=3, classes=CLASSES, resize=36, crop=32
    )
    ours = save_weights(m, root / "ours.safetensors")
    return dict(root=root, data=data, plain=plain, ours=ours, model=m)


def test_eval_refuses_unknown_normalisation(files, capsys):
    rc = main(["eval", "--weights", str(files["plain"]), "--data", str(files["data"]), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--normalize imagenet|caffe|mean:R,G,B" in err and len(err.strip().splitlines()) == 1


def test_eval_and_fuse_weights(files, capsys):
    rc = main(
        [
            "eval",
            "--weights",
            str(files["plain"]),
            "--normalize",
            "imagenet",
            "--data",
            str(files["data"]),
            "--protocol",
            "center,dense",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["n"] == 6 and {r["protocol"] for r in out["results"]} == {"center", "dense"}
    rc = main(
        [
            "fuse",
            "--weights",
            str(files["ours"]),
            "--weights",
            str(files["plain"]),
            "--normalize",
            "imagenet",
            "--data",
            str(files["data"]),
            "--protocol",
            "dense",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and "fused" in {r["net"] for r in out["results"]}
    assert main(["eval", "--data", str(files["data"])]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_predict_weights_names_classes(files, capsys):
    img = next((files["data"] / "dog").iterdir())
    rc = main(["predict", "--weights", str(files["ours"]), str(img), "--top", "2", "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(out[0]["top"]) == 2 and {t["class"] for t in out[0]["top"]} <= set(CLASSES)


@pytest.mark.slow
def test_export_onnx_checked_in_onnxruntime(files, capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from vggnet.export import check_onnx

    dense = tmp_path / "dense.onnx"
    rc = main(["export", "--weights", str(files["ours"]), "--format", "onnx", "--dense", "--out", str(dense)])
    out = capsys.readouterr().out
    assert rc == 0 and "checked in onnxruntime at 32x32, 64x96, 107x73" in out
    model = files["model"].eval()
    diffs = check_onnx(model, dense, [(32, 32), (64, 96), (107, 73)], dense=True, batch=3)
    assert max(diffs) < 1e-4
    meta = ort.InferenceSession(str(dense)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["vggnet.pretrained_cfg"])["classes"] == CLASSES
    crops = tmp_path / "crops.onnx"
    assert main(["export", "--weights", str(files["ours"]), "--out", str(crops), "--no-check"]) == 0
    assert max(check_onnx(model, crops, [(32, 32)] * 3, batch=5)) < 1e-4  # any batch size
    assert main(["export", "--out", str(crops)]) == 2


def _fine_tune(files, source, arch, run):
    """`vgg train --init-from SOURCE` on the tiny folder: one step of a tiny net; the exit code."""
    return main(
        [
            "train",
            "--init-from",
            source,
            "--data",
            str(files["data"]),
            "--arch",
            arch,
            "--width",
            "0.125",
            "--fc-width",
            "64",
            "--crop-size",
            "32",
            "--scale",
            "32,36",
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--val-fraction",
            "0.5",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--stats-images",
            "4",
            "--no-tensorboard",
            "--out",
            str(run),
        ]
    )


def test_train_init_from_a_named_source(served, files, tmp_path, capsys):  # noqa: F811  (the fixture)
    run = tmp_path / "run"
    assert _fine_tune(files, "torchvision:vgg11", "vgg11", run) == 0
    log = (run / "train.log").read_text() if (run / "train.log").exists() else capsys.readouterr().out
    assert "init from torchvision:vgg11: all layers but the last (new classes)" in log
    assert 'normalize = "imagenet"' in (run / "config.toml").read_text()
    back = vggnet.create_model(None, pretrained=run / "model.safetensors")
    assert back.pretrained_cfg["std"] == list(P.IMAGENET_STD) and back.pretrained_cfg["classes"] == CLASSES
    # conv1 started from the served weights (one SGD step away at most)
    ref = served["ref"].features[0].weight
    assert (back.features[0].weight - ref).abs().max() < 0.05 * ref.abs().max()
    # a run exports with the convention it was trained with
    out = tmp_path / "from_run.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    again = vggnet.create_model(None, pretrained=out)
    assert again.pretrained_cfg["mean"] == list(P.IMAGENET_MEAN) and again.num_classes == 3


def test_train_init_from_caffe_feeds_what_the_folded_weights_expect(served, files, tmp_path):  # noqa: F811
    """Fine-tuning the authors' Caffe weights: the run is fed RGB [0, 1] pixels minus the authors' mean pixel,
    the convention the folded weights take (not the training set's own mean), and records it."""
    run = tmp_path / "run"
    assert _fine_tune(files, "caffe:vgg16", "vgg16", run) == 0
    text = (run / "config.toml").read_text()
    assert 'normalize = "caffe"' in text and "pixel_range = 1" in text
    back = vggnet.create_model(None, pretrained=run / "model.safetensors")
    assert back.pretrained_cfg["mean"] == pytest.approx([123.68 / 255, 116.779 / 255, 103.939 / 255], abs=1e-5)
    assert vggnet.load_run(run).convention.mean == pytest.approx((123.68 / 255, 116.779 / 255, 103.939 / 255), abs=1e-5)
