"""The test-time protocols: dense, multi-crop, centre crop, flips, scales, fusion, batching, the CLI glue.

Small nets (config A at 1/16 width, 32-pixel crops) and tiny images keep this file to a few seconds on 2 CPU cores.
"""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch
from PIL import Image

import vggnet
from vggnet.cli.evaluate import (
    add_eval_arguments,
    add_fuse_arguments,
    add_predict_arguments,
    run_eval_cli,
    run_fuse_cli,
    run_predict_cli,
)
from vggnet.convention import Convention
from vggnet.data import Stats
from vggnet.evaluation import (
    as_net,
    center_crop,
    evaluate,
    folder_samples,
    grid_crops,
    grid_offsets,
    parse_protocols,
    parse_scales,
    posteriors,
    predict,
    resolve_eval_samples,
    resolve_scales,
)
from vggnet.runs import load_run
from vggnet.scales import eval_scales as default_scales

CLASSES = [f"c{i}" for i in range(10)]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25)


def tiny_model(seed=0, num_classes=10):
    # Kaiming init gives logits of order 1, so posteriors are far from uniform and comparisons mean something
    return vggnet.create_model(
        "A", num_classes=num_classes, width=1 / 16, fc_width=64, crop_size=32, init="kaiming", seed=seed
    ).eval()


def image(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def plain_center(model, img, mean=MEAN, std=STD):
    """A re-computation of the classic protocol by hand: the centre crop through the FC head, soft-max."""
    x = Convention(mean, std)(img)
    return model(center_crop(x, model.crop_size)[None]).softmax(-1)[0]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_dense_and_multicrop_at_the_crop_size_equal_the_centre_crop(model):
    img = image(32, 32)
    with torch.inference_mode():
        ref = plain_center(model, img)
    kw = dict(scales=[32], mean=MEAN, std=STD)
    center = posteriors(model, img, "center", **kw)
    dense = posteriors(model, img, "dense", flip=False, **kw)
    multicrop = posteriors(model, img, "multicrop", flip=False, **kw)  # all 25 crops are the whole image
    torch.testing.assert_close(center, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dense, center, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(multicrop, center, atol=1e-6, rtol=1e-5)
    # with flips, 50 crops of a crop-sized image are 25 copies of it and 25 of its mirror image: dense's 2 views
    torch.testing.assert_close(posteriors(model, img, "multicrop", **kw), posteriors(model, img, "dense", **kw))
    # a larger square image rescaled to Q = 32 too
    big = image(64, 64, seed=1)
    torch.testing.assert_close(
        posteriors(model, big, "dense", flip=False, **kw), posteriors(model, big, "center", **kw), atol=1e-6, rtol=1e-5
    )


def test_flip_of_a_symmetric_image_changes_nothing(model):
    half = image(40, 24, seed=2)
    img = torch.cat([half, half.flip(-1)], dim=-1)  # 40 x 48, its own mirror image
    for protocol in ("dense", "multicrop", "dense+multicrop"):
        for q in ([40], [32, 36]):  # Q = 40 leaves the image as it is; 32 and 36 rescale it
            a = posteriors(model, img, protocol, scales=q, flip=True, mean=MEAN, std=STD)
            b = posteriors(model, img, protocol, scales=q, flip=False, mean=MEAN, std=STD)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # and a non-symmetric image does change: the flip views are real views
    other = image(40, 48, seed=3)
    a = posteriors(model, other, "dense", scales=[40], flip=True, mean=MEAN, std=STD)
    assert not torch.allclose(a, posteriors(model, other, "dense", scales=[40], flip=False, mean=MEAN, std=STD))


def test_fusion_of_a_net_with_itself_equals_the_net(model):
    samples = [(image(36 + 4 * (i % 3), 40, seed=i), i % 10) for i in range(8)]
    kw = dict(protocols="dense,center", scales=[32, 40], batch_size=8, mean=MEAN, std=STD, return_posteriors=True)
    alone = evaluate(model, samples, **kw)
    fused = evaluate([model, model], samples, **kw)
    assert fused.nets == ["A", "A#2"]
    for p in ("dense", "center"):
        torch.testing.assert_close(fused.posteriors[("fused", p)], alone.posteriors[("A", p)])
        assert fused.get(p).top1_err == alone.get(p).top1_err
        assert fused.get(p).top5_err == alone.get(p).top5_err
    assert "fused" in fused.markdown()
    # fusion of different nets is the average of their posteriors
    other = tiny_model(seed=1)
    two = evaluate([model, other], samples, **kw)
    ref = (two.posteriors[("A", "dense")] + two.posteriors[("A#2", "dense")]) / 2
    torch.testing.assert_close(two.posteriors[("fused", "dense")], ref)
    single = posteriors([model, other], samples[0][0], "dense", scales=[32, 40], mean=MEAN, std=STD)
    torch.testing.assert_close(single, ref[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [6, 128])  # 6: one image's crops a batch; 128: crops of 2 images
def test_mixed_sizes_batched_equal_one_by_one(model, batch_size):
    sizes = [(40, 56), (56, 40), (40, 56), (48, 48), (33, 70), (40, 56), (64, 32), (48, 48), (35, 35)]
    samples = [(image(h, w, seed=i), i % 10) for i, (h, w) in enumerate(sizes)]
    protocols = ["dense", "multicrop", "dense+multicrop", "center"]
    res = evaluate(
        model,
        samples,
        protocols=protocols,
        scales=[32, 40],
        batch_size=batch_size,
        mean=MEAN,
        std=STD,
        return_posteriors=True,
    )
    assert res.n == len(sizes) and res.labels.tolist() == [y for _, y in samples]
    for p in protocols:
        one_by_one = torch.stack([posteriors(model, img, p, scales=[32, 40], mean=MEAN, std=STD) for img, _ in samples])
        torch.testing.assert_close(res.posteriors[("A", p)], one_by_one, atol=1e-5, rtol=1e-4)
        # the reported errors are those of the posteriors
        probs, labels = res.posteriors[("A", p)], res.labels
        assert res.get(p).top1_err == pytest.approx((probs.argmax(1) != labels).float().mean().item())
    # dense + multi-crop is the average of the two
    both = (res.posteriors[("A", "dense")] + res.posteriors[("A", "multicrop")]) / 2
    torch.testing.assert_close(res.posteriors[("A", "dense+multicrop")], both)


def test_multi_scale_defaults_from_the_training_scales():
    assert default_scales(256, 256, 224) == [224, 256, 288]  # fixed S: {S-32, S, S+32}
    assert default_scales(384, 384, 224) == [352, 384, 416]  # the paper's {S-32, S, S+32}, not S +- S/8
    assert default_scales(256, 512, 224) == [256, 384, 512]  # jittered: {Smin, (Smin+Smax)/2, Smax}
    assert default_scales(256, 256, 224, multi=False) == [256]
    assert default_scales(256, 512, 224, multi=False) == [384]
    assert default_scales(32, 32, 32) == [32, 37]  # step round(32/7) = 5; S - 5 = 27 < crop: clamped to 32
    assert default_scales(160, 160, 128) == [142, 160, 178]  # step proportional to the crop: 128/7 -> 18
    assert default_scales(32, 64, 32) == [32, 48, 64]
    net = as_net(tiny_model())
    net.scale_range = (32, 48)
    assert resolve_scales(net, "dense") == [32, 40, 48]
    assert resolve_scales(net, "center") == [40]  # the one-view baseline: one scale
    assert resolve_scales(net, "center", "multi") == [32, 40, 48]
    assert resolve_scales(net, "dense", "single") == [40]
    assert resolve_scales(net, "dense", [48, 32, 48]) == [32, 48]
    with pytest.raises(ValueError, match="crop size"):
        resolve_scales(net, "dense", [24])
    net.scale_range = None  # a bare model: S = crop * 256 / 224
    assert resolve_scales(net, "dense") == [32, 37, 42]  # 37 +- 5 (the crop-proportional step)


def test_grid_and_parsing():
    assert grid_offsets(64, 32) == [0, 8, 16, 24, 32]
    assert grid_offsets(32, 32) == [0] * 5
    # first at 0, last at the far edge, evenly spaced, the right half the mirror image of the left half
    assert grid_offsets(39, 32) == [0, 1, 3, 6, 7]
    assert grid_offsets(64, 32, n=1) == [16] and grid_offsets(64, 32, n=4) == [0, 10, 22, 32]
    x = torch.arange(2 * 3 * 40 * 48).view(2, 3, 40, 48)
    crops = grid_crops(x, 32)
    assert crops.shape == (2, 25, 3, 32, 32)
    assert torch.equal(crops[:, 0], x[..., :32, :32]) and torch.equal(crops[:, -1], x[..., 8:, 16:])
    names = ["dense", "multicrop", "dense+multicrop", "center"]
    assert parse_protocols("dense, multi-crop,dense+multicrop,centre") == names
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_protocols("sparse")
    assert parse_scales("256,384,512") == [256, 384, 512]
    assert parse_scales(None) is None and parse_scales("multi") is None and parse_scales("single") == "single"


# -- run folders and the CLI ---------------------------------------------------------------------------------


def make_images(root, per_class=2, classes=CLASSES[:4], seed=0):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 36 + 4 * ((c + i) % 3), 44
            Image.fromarray(image(h, w, seed=seed + 10 * c + i).permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    return root


def make_run(path, seed=0, scale=(32, 48), data="mnist"):
    path.mkdir(parents=True)
    vggnet.save_weights(tiny_model(seed=seed), path / "model.safetensors")
    config = {"data": str(data), "scale_min": scale[0], "scale_max": scale[1], "crop_size": 32, "seed": 0}
    (path / "config.toml").write_text(tomli_w.dumps(config))
    eye = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    Stats(mean=tuple(MEAN), std=(1.0, 1.0, 1.0), eigval=(0.0, 0.0, 0.0), eigvec=eye).save(path / "stats.json")
    (path / "classes.json").write_text(json.dumps(CLASSES))
    return path


@pytest.fixture
def run_dir(tmp_path):
    make_images(tmp_path / "data" / "val")
    make_images(tmp_path / "data" / "train")
    return make_run(tmp_path / "run", data=tmp_path / "data")


def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_eval_cli_writes_reports(run_dir, capsys):
    args = parse(
        add_eval_arguments,
        [str(run_dir), "--protocol", "dense,multicrop,dense+multicrop,center", "--scales", "32,40", "--device", "cpu"],
    )
    assert run_eval_cli(args) == 0
    out = capsys.readouterr().out
    for p in ("dense", "multicrop", "dense+multicrop", "center"):
        assert f"| {p} " in out
    assert "top-5 err" in out and "8 images" in out  # the run's own val/ split: 4 classes x 2 images
    md, js = sorted((run_dir / "eval").glob("*.md")), sorted((run_dir / "eval").glob("*.json"))
    assert len(md) == 1 and len(js) == 1
    report = json.loads(js[0].read_text())
    assert report["n"] == 8 and len(report["results"]) == 4
    assert {r["protocol"] for r in report["results"]} == {"dense", "multicrop", "dense+multicrop", "center"}
    assert all(0 <= r["top1_err"] <= 1 and r["images_per_s"] > 0 for r in report["results"])
    # a second evaluation keeps the first report
    assert run_eval_cli(parse(add_eval_arguments, [str(run_dir), "--device", "cpu", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["scales"] == [32, 40, 48]  # jittered [32, 48]
    assert len(list((run_dir / "eval").glob("*.json"))) == 2


def test_eval_cli_data_folder_checks_class_names(run_dir, tmp_path):
    folder = make_images(tmp_path / "other", classes=["c1", "c7"])
    samples = resolve_eval_samples(load_run(run_dir), folder)
    assert sorted({y for _, y in samples}) == [1, 7]  # labels by name, not by folder order
    bad = make_images(tmp_path / "bad", classes=["c1", "zebra"])
    with pytest.raises(ValueError, match="zebra"):
        run_eval_cli(parse(add_eval_arguments, [str(run_dir), "--data", str(bad), "--device", "cpu"]))
    with pytest.raises(FileNotFoundError):
        resolve_eval_samples(load_run(run_dir), tmp_path / "missing")


def test_unreadable_images_are_skipped_and_counted(run_dir, tmp_path):
    folder = make_images(tmp_path / "imgs", classes=["c0", "c3"])
    (folder / "c3" / "broken.png").write_bytes(b"not a png")
    res = evaluate(run_dir, folder, scales=[32], device="cpu")
    assert res.n == 4 and len(res.skipped) == 1 and "broken.png" in res.skipped[0]
    assert "unreadable" in res.markdown()


def test_fuse_cli_and_fusion_of_a_run_with_itself(run_dir, tmp_path, capsys):
    other = make_run(tmp_path / "run2", seed=1, data=tmp_path / "data")
    assert run_fuse_cli(parse(add_fuse_arguments, [str(run_dir), str(other), "--scales", "32", "--device", "cpu"])) == 0
    out = capsys.readouterr().out
    assert "| run " in out and "| run2 " in out and "| fused " in out
    assert list((other / "eval").glob("*.md")) and list((run_dir / "eval").glob("*.md"))
    with pytest.raises(ValueError, match="two"):
        run_fuse_cli(parse(add_fuse_arguments, [str(run_dir)]))
    # a run fused with itself is the run
    kw = dict(protocols="dense", scales=[32, 40], device="cpu", return_posteriors=True)
    alone, twice = evaluate(run_dir, None, **kw), evaluate([run_dir, run_dir], None, **kw)
    torch.testing.assert_close(twice.posteriors[("fused", "dense")], alone.posteriors[("run", "dense")])
    assert twice.get("dense").top1_err == alone.get("dense").top1_err


def test_predict_cli_and_api(run_dir, capsys):
    img = next((run_dir.parent / "data" / "val" / "c2").glob("*.png"))
    assert run_predict_cli(parse(add_predict_arguments, [str(run_dir), str(img), "--json", "--device", "cpu"])) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    probs = [t["prob"] for t in pred["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and all(t["class"] in CLASSES for t in pred["top"])
    # the default: dense over the run's multi-scale Q with flips
    ref = posteriors(run_dir, img, "dense")
    assert pred["top"][0]["label"] == int(ref.argmax()) and pred["top"][0]["prob"] == pytest.approx(ref.max().item())
    args = [str(run_dir), str(run_dir), str(img.parent), "--top", "3", "--protocol", "center", "--device", "cpu"]
    assert run_predict_cli(parse(add_predict_arguments, args)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 4 and lines[1].lstrip().startswith("1. c")
    preds = predict(tiny_model(), [image(40, 50), image(33, 33)], top=20, classes=CLASSES, device="cpu")
    assert [len(p.labels) for p in preds] == [10, 10]  # top is capped at the class count
    assert sum(preds[0].probs) == pytest.approx(1.0, abs=1e-5)


def test_the_net_stays_trainable_after_predict_and_evaluate():
    """The net is moved to the device outside inference mode: its weights are not inference tensors after."""
    model = tiny_model()
    predict(model, [image(40, 50)], device="cpu")
    evaluate(model, [(image(36, 36), 1)], scales=[32], device="cpu")
    model.train()
    model(torch.rand(2, 3, 32, 32)).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert all(p.grad is not None for p in model.parameters())


def test_resolve_eval_samples_defaults(run_dir, tmp_path, monkeypatch):
    run = load_run(run_dir)
    # the config's data folder has val/: its images, labelled by class name
    samples = resolve_eval_samples(run, None)
    assert len(samples) == 8 and {y for _, y in samples} == {0, 1, 2, 3}
    # an embedded data set: the val split of vggnet.data.resolve_data, relabelled to the run's classes by name
    import vggnet.data

    seen = {}

    def fake_resolve_data(spec, val=None, val_fraction=0.1, seed=0, class_names=None, cache_dir=None):
        seen.update(spec=spec, class_names=class_names)
        return [], [(image(32, 32), 0), (image(32, 32, 1), 1)], ["c5", "c2"]

    monkeypatch.setattr(vggnet.data, "resolve_data", fake_resolve_data, raising=False)
    shutil.rmtree(run_dir.parent / "data" / "val")
    got = resolve_eval_samples(run, "mnist")
    assert seen == {"spec": "mnist", "class_names": None} and [y for _, y in got] == [5, 2]
    # with no --data, a data folder without val/ is split by resolve_data as in training
    assert [y for _, y in resolve_eval_samples(run, None)] == [5, 2]
    assert seen["spec"] == str(run_dir.parent / "data")


def test_bare_model_on_a_folder(tmp_path, model):
    folder = make_images(tmp_path / "f", classes=CLASSES)
    res = evaluate(model, folder, protocols="center", mean=MEAN, std=STD, device="cpu", limit=7)
    assert res.n == 7 and res.k == 5 and res.get("center").scales == [37]
    assert folder_samples(folder, CLASSES)[0][1] == 0
    few = evaluate(tiny_model(num_classes=3), [(image(32, 32), 2)], scales=[32], device="cpu")
    assert few.k == 3 and few.get("dense").top5_err == 0.0 and "top-3" in few.markdown()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu():
    samples = [(image(36 + 4 * (i % 3), 44, seed=i), i % 10) for i in range(12)]
    kw = dict(protocols="dense,multicrop,center", scales=[32, 40], mean=MEAN, std=STD, return_posteriors=True)
    cpu = evaluate(tiny_model(), samples, device="cpu", **kw)
    gpu = evaluate(tiny_model(), samples, device="cuda", **kw)
    for key, probs in cpu.posteriors.items():
        # bf16 autocast and the float (unrounded) rescale on the GPU: close, not equal
        torch.testing.assert_close(gpu.posteriors[key], probs, atol=3e-2, rtol=0)


def test_run_default_split_and_display_names(tmp_path):
    # a data folder that is one class tree: evaluation uses the split training held out (real resolve_data)
    data = make_images(tmp_path / "tree", per_class=10)
    run = make_run(tmp_path / "run", data=data)
    text = (run / "config.toml").read_text() + "val_fraction = 0.2\n"
    (run / "config.toml").write_text(text)
    samples = resolve_eval_samples(load_run(run), None)
    assert len(samples) == 8 and sorted(y for _, y in samples) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(Path(p).parent.name == CLASSES[y] for p, y in samples)
    # classes.json holds display names from a class-names file: folders are matched through that file
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i} class number {i}\n" for i in range(10)))
    (run / "classes.json").write_text(json.dumps([f"class number {i}" for i in range(10)]))
    (run / "config.toml").write_text(text + f"class_names = {json.dumps(str(names))}\n")
    samples = resolve_eval_samples(load_run(run), make_images(tmp_path / "wnids", classes=["c2", "c9"]))
    assert sorted({y for _, y in samples}) == [2, 9]


def test_the_package_exports_evaluate_and_predict():
    import vggnet.evaluation

    assert callable(vggnet.evaluate) and vggnet.evaluate is vggnet.evaluation.evaluate
    assert callable(vggnet.evaluation.predict) and vggnet.predict is vggnet.evaluation.predict


def test_test_folders_are_scanned_as_training_scans_them(tmp_path):
    from vggnet.data import list_images, scan_folder

    root = make_images(tmp_path / "tree", classes=CLASSES[:3])
    nested = root / "c1" / "more"
    nested.mkdir()
    shutil.copy(root / "c1" / "0.png", nested / "deep.png")
    (root / "c2" / ".hidden").mkdir()
    shutil.copy(root / "c2" / "0.png", root / "c2" / ".hidden" / "x.png")  # hidden folders are skipped
    (root / "c0" / "notes.txt").write_text("not an image")
    (root / "c0" / "twin.png").symlink_to(root / "c0" / "0.png")  # the same file twice counts once
    trained, _ = scan_folder(root)
    tested = folder_samples(root, CLASSES[:3])
    assert sorted(map(tuple, trained)) == sorted(tested)  # the same images, labelled alike
    assert any(p.endswith("deep.png") for p, _ in tested) and not any(".hidden" in p for p, _ in tested)
    assert sorted(list_images(root / "c1")) == sorted(p for p, y in tested if y == 1)
    # a test folder may hold a subset of the net's classes: labels by name, not by folder order
    assert {y for _, y in folder_samples(make_images(tmp_path / "few", classes=["c7", "c2"]), CLASSES)} == {2, 7}


def test_predict_cli_names_an_unreadable_image_and_predicts_the_others(run_dir, tmp_path, capsys):
    """One 0-byte file among the images does not abort `vgg predict`: the others are predicted, the bad file is
    named on stderr and the exit code is 1 (issue 25)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(image(40, 44).permute(1, 2, 0).numpy()).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"")
    Image.fromarray(image(44, 40, seed=3).permute(1, 2, 0).numpy()).save(folder / "c.png")
    args = parse(add_predict_arguments, [str(run_dir), str(folder), "--device", "cpu", "--json"])
    assert run_predict_cli(args) == 1
    out, err = capsys.readouterr()
    preds = json.loads(out)
    assert sorted(Path(p["image"]).name for p in preds) == ["a.png", "c.png"]
    assert "b.png" in err and "skipped 1 unreadable" in err
    with pytest.raises(ValueError, match="b.png"):  # the Python API keeps its error unless asked to skip
        vggnet.predict(run_dir, [folder / "b.png"], device="cpu")
