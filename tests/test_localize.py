"""Localisation (Appendix A): SCR / PCR heads, greedy merging, dense window boxes, training, both protocols, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import tomli_w
import torch
from PIL import Image

from vggnet import boxes as B
from vggnet import create_model
from vggnet import localisation as L
from vggnet.cli import main
from vggnet.data import Stats
from vggnet.files import RunInUse, RunLock
from vggnet.runs import load_run
from vggnet.training import Interrupted, latest_checkpoint, load_checkpoint
from vggnet.weights import read_state_dict, save_weights

TINY = dict(width=0.125, fc_width=64, crop_size=32)


# ---- heads ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("regression, outputs", [("scr", 4), ("pcr", 12)])
def test_scr_and_pcr_heads(regression, outputs):
    cls = create_model("A", num_classes=3, **TINY).eval()
    loc = L.localisation_net(cls, regression).eval()
    assert loc.classifier[6].out_features == outputs == L.box_outputs(regression, 3)
    # every layer but the last is the classification net's
    for k, v in cls.state_dict().items():
        if not k.startswith("classifier.6."):
            assert torch.equal(v, loc.state_dict()[k]), k
    x = torch.randn(2, 3, 32, 32)
    out = loc(x)
    labels = torch.tensor([2, 0])
    picked = L.select_boxes(out, labels, regression)
    assert picked.shape == (2, 4)
    if regression == "pcr":  # the box of each image's class: outputs 8..11 for class 2, 0..3 for class 0
        assert torch.equal(picked[0], out[0, 8:12]) and torch.equal(picked[1], out[1, 0:4])
    else:
        assert torch.equal(picked, out)
    # dense mode gives the same box at a window as the crop does, for maps too (N, 4 or 4C, h, w)
    dense = loc.dense(torch.randn(1, 3, 64, 64))
    assert dense.shape == (1, outputs, 2, 2)
    assert L.select_boxes(dense, torch.tensor([1]), regression).shape == (1, 4, 2, 2)


def test_euclidean_loss():
    pred, target = torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    assert L.box_loss(pred, target).item() == pytest.approx(0.5 * 0.04)
    assert L.box_loss(target, target).item() == 0


# ---- merging ----------------------------------------------------------------------------------------------------


def test_merging_averages_overlapping_boxes_and_adds_their_scores():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [100, 100, 110, 110]])
    merged, scores = L.merge_boxes(boxes, torch.tensor([0.3, 0.4, 0.5]))
    assert merged.tolist() == [[0.5, 0.5, 10.5, 10.5], [100, 100, 110, 110]]  # the average of the two close ones
    assert scores.tolist() == pytest.approx([0.7, 0.5])  # two agreeing windows outrank a lone confident one


def test_merging_keeps_apart_boxes_that_do_not_overlap_enough():
    boxes = torch.tensor([[0.0, 0, 10, 10], [6, 0, 16, 10]])  # IoU 4/16 = 0.25
    merged, scores = L.merge_boxes(boxes, torch.tensor([0.2, 0.9]))
    assert merged.tolist() == [[6, 0, 16, 10], [0, 0, 10, 10]] and scores.tolist() == pytest.approx([0.9, 0.2])
    merged, _ = L.merge_boxes(boxes, torch.tensor([0.2, 0.9]), threshold=0.2)  # a looser criterion joins them
    assert merged.tolist() == [[3, 0, 13, 10]]


def test_merging_is_greedy_closest_pair_first_and_chains():
    # a and b are nearly the same box; c overlaps their average enough only once they are merged... then joins
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [0, 2, 10, 12], [50, 50, 60, 60]])
    merged, scores = L.merge_boxes(boxes, torch.ones(4))
    assert len(merged) == 2 and scores.tolist() == [3, 1]
    assert merged[0].tolist() == pytest.approx([0, 2 / 3, 10, 11])  # the mean of all three members
    empty, none = L.merge_boxes(torch.zeros(0, 4), torch.zeros(0))
    assert empty.shape == (0, 4) and none.shape == (0,)


def test_window_boxes_place_each_location_at_its_window():
    box_map = torch.zeros(4, 2, 3)
    box_map[:, :, :] = torch.tensor([0.5, 0.5, 1.0, 1.0])[:, None, None]  # the whole window, everywhere
    wb = L.window_boxes(box_map, crop=32, stride=32)
    assert wb.shape == (2, 3, 4)
    assert wb[0, 0].tolist() == [0, 0, 32, 32] and wb[1, 2].tolist() == [64, 32, 96, 64]


# ---- a tiny run end to end ----------------------------------------------------------------------------------------


def epoch_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


def make_data(root: Path, per_class: int = 4) -> None:
    """Two classes of 48x64 images, a bright rectangle (class 0) or a dimmer one (class 1), with boxes.csv."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in (0, 1):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                x0, y0 = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
                img = Image.new("RGB", (64, 48))
                img.paste((255, 255, 255) if c == 0 else (120, 200, 40), (x0, y0, x0 + 24, y0 + 16))
                img.save(folder / f"{i}.png")
                rows.append([f"{split}/c{c}/{i}.png", x0, y0, x0 + 24, y0 + 16, f"c{c}"])
    rows.append(["train/c0/0.png", 5, 5, 5, 30, "c0"])  # a zero-area box: skipped, counted
    with open(root / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([list(B.CSV_HEADER), *rows])


def make_run(folder: Path, data: Path, dropout: float = 0.5) -> Path:
    """A classification run folder (untrained weights) as `vgg train` leaves it."""
    folder.mkdir(parents=True)
    net = create_model("A", num_classes=2, init="kaiming", seed=0, dropout=dropout, **TINY)
    save_weights(net, folder / "model.safetensors")
    config = dict(arch="A", data=str(data), scale_min=48, scale_max=48, normalize="mean", **TINY)
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    Stats((0.2, 0.2, 0.2), (0.3, 0.3, 0.3), (0.1, 0.01, 0.001), ((1, 0, 0), (0, 1, 0), (0, 0, 1))).save(
        folder / "stats.json"
    )
    (folder / "classes.json").write_text(json.dumps(["c0", "c1"]))
    return folder


def test_train_resume_and_evaluate_both_protocols(tmp_path):
    data = tmp_path / "data"
    make_data(data)
    cls = make_run(tmp_path / "cls", data)
    cfg = dict(
        from_run=str(cls),
        regression="pcr",
        finetune="fc",
        epochs=2,
        batch_size=4,
        device="cpu",
        out=str(tmp_path / "loc"),
        max_steps=1,
    )
    run = L.train_localisation(cfg)
    assert (run / "checkpoints").is_dir() and not epoch_rows(run)
    assert "zero or negative area" in (run / "bad_boxes.txt").read_text()
    saved = json.loads((run / "localize.json").read_text())
    assert saved["regression"] == "pcr" and saved["scale"] == 48 and saved["num_classes"] == 2
    # stopped inside epoch 1: a checkpoint, and no weights yet (as `vgg train --max-steps`)
    assert not (run / "model.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="continue it with `vgg localize train --resume"):
        L.load_loc_run(run)
    at_step_1 = load_checkpoint(latest_checkpoint(run))["model"]
    L.train_localisation({"max_steps": 0}, resume=run)  # to the end of epoch 2
    epochs = epoch_rows(run)
    assert [e["epoch"] for e in epochs] == [1, 2] and all(0 <= e["val_loc_err"] <= 1 for e in epochs)
    after = L.load_loc_run(run)[0].model.state_dict()
    # FC-only fine-tuning: the conv layers are the classification net's, the last layer moved
    classifier = load_run(cls).model.state_dict()
    assert all(torch.equal(after[k], classifier[k]) for k in after if k.startswith("features."))
    assert not torch.equal(after["classifier.6.weight"], at_step_1["classifier.6.weight"])
    with pytest.raises(FileExistsError):
        L.train_localisation(cfg)
    with pytest.raises(ValueError, match=r"regression \('pcr' -> 'scr'\)"):  # what the net learns: refused by name
        L.train_localisation({"regression": "scr", "epochs": 3}, resume=run)
    # one writer per run folder: a localisation run held by another writer is refused, naming the holder
    with RunLock(run, "another vgg localize train"), pytest.raises(RunInUse, match=f"{os.getpid()}.*one writer"):
        L.train_localisation({"max_steps": 0, "epochs": 3}, resume=run)

    center = L.evaluate_localisation(run, "center", device="cpu")
    dense = L.evaluate_localisation(run, "dense", scales=[48, 64], device="cpu")
    assert center.images == dense.images == 8
    assert center.top1_loc_err == center.top5_loc_err  # the true class: one prediction
    assert dense.top5_loc_err <= dense.top1_loc_err and dense.top1_cls_err is not None
    text = L.markdown_tables([center, dense])
    assert "## Table 8" in text and "## Table 9" in text and "| PCR" in text and "48,64" in text


def _train_cli(source, out, *extra: str) -> list[str]:
    """`vgg localize train --from SOURCE [extra] --epochs 1 --batch-size 4 --device cpu --out OUT`."""
    tail = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    return ["localize", "train", "--from", str(source), *extra, *tail]


def test_cli_localize_train_and_eval(tmp_path, capsys):
    data = tmp_path / "data"
    make_data(data, per_class=2)
    cls = make_run(tmp_path / "cls", data)
    out = tmp_path / "scr"
    assert main(_train_cli(cls, out, "--regression", "scr")) == 0
    assert main(["localize", "eval", str(out), "--protocol", "center,dense", "--scales", "48", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Table 8" in text and "SCR" in text
    report = json.loads((out / "eval" / "localize.json").read_text())
    assert [r["protocol"] for r in report["results"]] == ["center", "dense"]
    # user mistakes: one line, exit 2
    assert main(["localize", "eval", str(cls)]) == 2
    assert "is not a localisation run" in capsys.readouterr().err
    assert main(["localize", "eval", str(out), "--protocol", "sideways"]) == 2
    assert main(["localize", "train", "--regression", "pcr"]) == 2
    # data without any box: a one-line error, and the list of what was skipped
    (data / "boxes.csv").unlink()
    capsys.readouterr()
    assert main(["localize", "train", "--from", str(cls), "--device", "cpu", "--out", str(tmp_path / "none")]) == 2
    assert "no usable boxes" in capsys.readouterr().err
    assert "no box" in (tmp_path / "none" / "bad_boxes.txt").read_text()


def test_dense_protocol_feeds_the_classifier_what_vgg_eval_feeds_it(tmp_path, monkeypatch):
    """A run of the paper's init (pixels 0-255 minus the mean): localisation's dense class scores and `vgg eval`
    feed its net the same tensor (issue 22: localisation once fed it inputs 255 times too small)."""
    from vggnet.data.io import load_image
    from vggnet.evaluation import as_net, net_posteriors
    from vggnet.model import VGG

    data = tmp_path / "data"
    make_data(data, per_class=1)
    cls = make_run(tmp_path / "cls", data)
    config = dict(arch="A", data=str(data), scale_min=48, scale_max=48, normalize="mean", pixel_range=255, **TINY)
    (cls / "config.toml").write_text(tomli_w.dumps(config))
    run = L.train_localisation(
        dict(
            from_run=str(cls),
            regression="scr",
            epochs=1,
            batch_size=4,
            device="cpu",
            out=str(tmp_path / "loc"),
            max_steps=1,
        )
    )
    assert L.load_loc_run(run)[0].convention.pixel_range == 255  # recorded, not lost
    seen: list[torch.Tensor] = []
    dense = VGG.dense

    def spy(self, x, *a, **k):
        if self.num_classes == 2:  # the classification net (the box net has 4 outputs)
            seen.append(x.detach().clone())
        return dense(self, x, *a, **k)

    monkeypatch.setattr(VGG, "dense", spy)
    L.evaluate_localisation(run, "dense", scales=[48], device="cpu")
    from_localize = list(seen)
    seen.clear()
    samples, _ = B.box_samples(str(data), "val", None, 0, B.BoxReport())
    images = [load_image(s.path) for s in samples]
    net_posteriors(as_net(str(cls)), images, {"dense": [48]}, flip=False)
    assert len(from_localize) == len(seen) == 1
    assert torch.equal(from_localize[0], seen[0])
    assert from_localize[0].abs().max() > 20  # on the 0-255 scale minus the mean, not [0, 1]


# ---- the training engine's guarantees, for localisation too ------------------------------------------------------


@pytest.fixture(scope="module")
def loc_source(tmp_path_factory):
    """Data with boxes and a classification run of net A (dropout 0.5 in its FC layers: resume must restore the
    RNG state for the dropout masks to agree)."""
    root = tmp_path_factory.mktemp("loc-source")
    make_data(root / "data")
    return make_run(root / "cls", root / "data")


def loc_config(cls: Path, out: Path, **kw) -> dict:
    return dict(dict(from_run=str(cls), regression="pcr", epochs=2, batch_size=4, device="cpu", out=str(out)), **kw)


def loc_weights(run: Path) -> dict:
    return read_state_dict(run / "model.safetensors")[0]


def same_weights(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight_loc(loc_source, tmp_path_factory):
    """The uninterrupted localisation run (2 epochs of 2 steps) the interrupted ones are compared with."""
    return L.train_localisation(loc_config(loc_source, tmp_path_factory.mktemp("straight") / "loc"))


def test_localisation_interrupted_then_resumed_equals_an_uninterrupted_run(
    loc_source, straight_loc, tmp_path, monkeypatch
):
    # a stop by --max-steps inside epoch 1, then SIGTERM in the middle of epoch 2 (the engine finishes the step
    # and saves a checkpoint), then the rest: the same weights, bit for bit, and the same logged epochs
    run = L.train_localisation(loc_config(loc_source, tmp_path / "loc", max_steps=1))
    calls = []
    real_loss = L.Localisation.loss

    def terminated(out, targets, cfg, reduction="mean"):
        calls.extend([1] if torch.is_grad_enabled() else [])  # training steps (validation runs without grad)
        if len(calls) == 2 and torch.is_grad_enabled():  # the second step of this call: step 3 of the run
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(out, targets, cfg, reduction)

    monkeypatch.setattr(L.Localisation, "loss", staticmethod(terminated))
    with pytest.raises(Interrupted, match="vgg localize train --resume"):
        L.train_localisation({"max_steps": 0}, resume=run)
    monkeypatch.undo()
    assert load_checkpoint(latest_checkpoint(run))["global_step"] == 3
    L.train_localisation({}, resume=run)
    assert same_weights(loc_weights(run), loc_weights(straight_loc))
    ours, theirs = epoch_rows(run), epoch_rows(straight_loc)
    assert [r["val_loc_err"] for r in ours] == [r["val_loc_err"] for r in theirs] and len(ours) == 2
    assert [r["train_loss"] for r in ours] == pytest.approx([r["train_loss"] for r in theirs], rel=1e-6)
    # the same run-folder files as `vgg train`, and no temporary left behind
    for name in ("config.toml", "metrics.jsonl", "model.safetensors", "stats.json", "classes.json", "localize.json"):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp"))


def test_localisation_corrupt_last_checkpoint_falls_back_to_the_previous_one(loc_source, straight_loc, tmp_path):
    run = L.train_localisation(loc_config(loc_source, tmp_path / "loc", max_steps=3))  # checkpoints at steps 2, 3
    newest = latest_checkpoint(run)
    assert newest.name.endswith("000000003.pt")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk, a killed copy
    L.train_localisation({"max_steps": 0}, resume=run)  # continues from step 2
    assert (newest.parent / (newest.name + ".unreadable")).is_file()
    assert same_weights(loc_weights(run), loc_weights(straight_loc))


def test_localize_from_a_weights_file_equals_from_its_run(loc_source, tmp_path, capsys):
    """`--from` takes every SOURCE form through the one loader: the run's weights as a bare file (carrying their
    input convention, classes and resize) start the same localisation, bit for bit, as the run folder does; and
    `localize eval --classifier` takes the file too."""
    from vggnet.convention import Convention
    from vggnet.pretrained import make_cfg
    from vggnet.weights import load_model

    model = load_model(loc_source / "model.safetensors")
    model.pretrained_cfg = make_cfg(
        Convention((0.2, 0.2, 0.2)), source="test", num_classes=2, classes=["c0", "c1"], resize=48, crop=32
    )  # the run's: normalize mean, pixel range 1, S = 48
    weights = tmp_path / "elsewhere" / "cls.safetensors"
    weights.parent.mkdir()
    save_weights(model, weights)
    data = str(loc_source.parent / "data")
    a = L.train_localisation(loc_config(loc_source, tmp_path / "from-run", epochs=1, data=data))
    b = L.train_localisation(loc_config(weights, tmp_path / "from-file", epochs=1, data=data))
    assert same_weights(loc_weights(a), loc_weights(b))
    assert json.loads((b / "localize.json").read_text())["from_run"] == str(weights.resolve())
    capsys.readouterr()
    assert (
        main(
            [
                "localize",
                "eval",
                str(b),
                "--protocol",
                "dense",
                "--scales",
                "48",
                "--device",
                "cpu",
                "--classifier",
                str(weights),
            ]
        )
        == 0
    )
    assert "Table 9" in capsys.readouterr().out
    # weights name no data: --data is asked for, in one line
    assert main(["localize", "train", "--from", str(weights), "--device", "cpu", "--out", str(tmp_path / "c")]) == 2
    assert "pass --data" in capsys.readouterr().err


def _ddp_localisation(rank, world, port, cfg):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        L.train_localisation(cfg)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_localisation_equals_one_process(tmp_path):
    """DDP, as `vgg train` has it: 2 processes x 2 images (gloo) make the same updates as 1 process x 4 images
    (no dropout: its masks differ by rank), and rank 0 alone writes the run folder."""
    import socket

    import torch.multiprocessing as mp

    make_data(tmp_path / "data", per_class=2)
    cls = make_run(tmp_path / "cls", tmp_path / "data", dropout=0.0)
    one = L.train_localisation(loc_config(cls, tmp_path / "one", epochs=1, max_steps=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(
        _ddp_localisation, args=(2, port, loc_config(cls, tmp_path / "two", epochs=1, max_steps=1)), nprocs=2, join=True
    )
    a = load_checkpoint(latest_checkpoint(one))["model"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "two"))["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert (tmp_path / "two" / "localize.json").is_file()


def test_localize_from_weights_without_a_convention_takes_normalize(loc_source, tmp_path, capsys):
    """A torchvision-layout file carries no input convention: `--normalize` states it, as for `--weights`, and
    `localize eval` rates the boxes with the same convention."""
    from vggnet.weights import load_model

    sd = {k: v for k, v in load_model(loc_source / "model.safetensors").state_dict().items()}
    weights = tmp_path / "tv.pth"
    torch.save(sd, weights)
    out = tmp_path / "loc"
    args = _train_cli(weights, out, "--data", str(loc_source.parent / "data"))
    assert main(args) == 2
    assert "no known input normalisation" in capsys.readouterr().err
    assert main(args + ["--normalize", "mean:51,51,51"]) == 0  # the run's mean pixel 0.2 on 0-255
    assert L.load_loc_run(out)[0].convention.mean == pytest.approx((0.2, 0.2, 0.2))
    capsys.readouterr()
    assert main(["localize", "eval", str(out), "--protocol", "dense", "--scales", "48", "--device", "cpu"]) == 0
