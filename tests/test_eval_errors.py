"""Where a net errs (issue 23): per-class accuracy, the confusion matrix, the most-confused pairs, the report files
`vgg eval --out DIR` writes, and ImageNet subsets (WordNet-id folders) scored against a 1,000-class head.

Tiny nets (config A at 1/16 width, 32-pixel crops), a few 32x32 images, float32 on the CPU (--no-amp).
"""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vggnet
import vggnet.pretrained as P
from vggnet.cli.evaluate import add_eval_arguments, add_predict_arguments, run_eval_cli, run_predict_cli
from vggnet.convention import Convention
from vggnet.data import imagenet_wnids
from vggnet.evaluation import (
    EvalResult,
    ProtocolResult,
    bare_folder_samples,
    evaluate,
    predict,
    weights_net,
    write_eval_files,
)
from vggnet.metrics import confusion_matrix, most_confused, per_class_accuracy, top1_predictions
from vggnet.report import json_text

CLASSES = [f"c{i}" for i in range(10)]


# one centre crop at Q = 32, float32 on the CPU: the settings the command-line tests share
CENTER_32_CPU = ["--protocol", "center", "--scales", "32", "--device", "cpu", "--no-amp"]


def tiny(num_classes=10, seed=0):
    return vggnet.create_model(
        "A", num_classes=num_classes, width=1 / 16, fc_width=64, crop_size=32, init="kaiming", seed=seed
    ).eval()


def pixels(seed):
    return torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make_folder(root, classes, per_class=2):
    """32x32 images (the crop size: at Q = 32 the centre crop is the whole image, no rescale)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels(100 * c + i).numpy()).save(root / name / f"{i}.png")
    return root


def save_net(model, path, classes):
    """Weights as a released net's: the ImageNet convention and class names in the file."""
    conv = Convention(P.IMAGENET_MEAN, P.IMAGENET_STD)
    model.pretrained_cfg = P.make_cfg(
        conv, source="test", num_classes=model.num_classes, classes=classes, resize=32, crop=32
    )
    vggnet.save_weights(model, path)
    return path


def by_hand(model, folder, classes):
    """The centre-crop posteriors of each image, computed without the evaluation driver, and its label."""
    conv = Convention(P.IMAGENET_MEAN, P.IMAGENET_STD)
    probs, labels = [], []
    for name in sorted(p.name for p in folder.iterdir()):
        for f in sorted((folder / name).iterdir()):
            img = torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)
            with torch.no_grad():
                probs.append(model(conv(img)[None]).softmax(-1)[0])
            labels.append(classes.index(name))
    return torch.stack(probs), torch.tensor(labels)


def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_confusion_matrix_and_per_class_accuracy_of_known_predictions():
    nan = float("nan")
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # true 0 -> 0
            [0.2, 0.7, 0.1],  # true 0 -> 1
            [0.5, 0.5, 0.0],  # true 1 -> 0 (a tie: the first of equal maxima, as top-k error ranks it)
            [0.1, 0.2, 0.7],  # true 1 -> 2
            [0.0, 0.3, 0.6],  # true 1 -> 2
            [nan, 0.1, 0.2],  # true 2 -> 2 (a NaN never the prediction)
        ]
    )
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = top1_predictions(scores)
    assert pred.tolist() == [0, 1, 0, 2, 2, 2]
    cm = confusion_matrix(pred, labels, 3)
    assert cm.dtype == torch.int64 and cm.tolist() == [[1, 1, 0], [1, 0, 2], [0, 0, 1]]
    n, acc = per_class_accuracy(cm)
    assert n.tolist() == [2, 3, 1] and acc.tolist() == [0.5, 0.0, 1.0]
    # most images first, then the larger share of the true class
    assert most_confused(cm) == [(1, 2, 2, 2 / 3), (0, 1, 1, 0.5), (1, 0, 1, 1 / 3)]
    assert most_confused(cm, top=1) == [(1, 2, 2, 2 / 3)]
    # a class without images has no accuracy (NaN), not 0
    assert per_class_accuracy(confusion_matrix(torch.tensor([0]), torch.tensor([0]), 2))[1][1].isnan()
    with pytest.raises(ValueError, match="labels must be in"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)
    # the result object names the classes
    row = ProtocolResult("net", "center", [32], False, 4 / 6, 0.0, 6, 1.0, confusion=cm, classes=["a", "b", "c"])
    assert [(c["class"], c["n"], c["correct"], c["top1_acc"]) for c in row.per_class] == [
        ("a", 2, 1, 0.5),
        ("b", 3, 0, 0.0),
        ("c", 1, 1, 1.0),
    ]
    assert row.confused_pairs(1) == [
        dict(true="b", predicted="c", count=2, share=2 / 3, true_index=1, predicted_index=2)
    ]
    assert row.to_dict()["confusion"] == cm.tolist()


def test_eval_weights_out_writes_where_the_net_errs(tmp_path, capsys):
    model = tiny()
    weights = save_net(model, tmp_path / "w.safetensors", CLASSES)
    data = make_folder(tmp_path / "data", ["c0", "c1", "c2", "c3"], per_class=3)
    out = tmp_path / "out"
    argv = [
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--out",
        str(out),
        "--protocol",
        "center,dense",
        "--scales",
        "32",
        "--no-flip",
        "--device",
        "cpu",
        "--no-amp",
    ]
    assert run_eval_cli(parse(add_eval_arguments, argv)) == 0
    printed = capsys.readouterr().out
    assert "worst classes" in printed and ("most-confused pairs" in printed or "no image was taken" in printed)
    (md,), (js,) = list(out.glob("eval-*.md")), list(out.glob("eval-*.json"))
    assert len(list(out.glob("eval-*-confusion-*-center.png"))) == 1 and len(list(out.glob("*.png"))) == 2
    report = json.loads(js.read_text())
    center = next(r for r in report["results"] if r["protocol"] == "center")
    # the confusion matrix is that of the posteriors computed by hand (the centre crop of a 32x32 image is it)
    probs, labels = by_hand(model, data, CLASSES)
    want = confusion_matrix(probs.argmax(1), labels, 10)
    assert center["confusion"] == want.tolist()
    assert center["top1_err"] == pytest.approx(1 - want.trace().item() / 12)
    assert [(c["class"], c["n"]) for c in center["per_class"]] == [("c0", 3), ("c1", 3), ("c2", 3), ("c3", 3)]
    assert [c["top1_acc"] for c in center["per_class"]] == pytest.approx(per_class_accuracy(want)[1][:4].tolist())
    assert all(p["count"] > 0 and p["true"] != p["predicted"] for p in center["most_confused"])
    assert "every class with images, worst first" in md.read_text()
    # four of the net's ten classes: also scored among those four only
    assert report["subset"] == [0, 1, 2, 3] and "(4 classes)" in printed
    sub = probs[:, :4].argmax(1)
    assert center["subset_top1_err"] == pytest.approx((sub != labels).float().mean().item())
    # --out names a folder: a file there is refused before any work, and kept
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a folder"):
        run_eval_cli(parse(add_eval_arguments, argv[:5] + [str(tmp_path / "notes.txt")] + argv[6:]))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_confusion_png_for_few_classes_not_for_many(tmp_path):
    def result(num_classes):
        labels = torch.arange(num_classes)
        cm = confusion_matrix((labels + 1) % num_classes, labels, num_classes)  # every image taken for the next
        row = ProtocolResult("net", "dense", [32], True, 1.0, 1.0, num_classes, 1.0, confusion=cm)
        return EvalResult([row], num_classes, num_classes, 5, [], ["net"], ["dense"], True, 8, "cpu", 1.0, 0.1)

    few = write_eval_files(result(3), tmp_path / "few")
    many = write_eval_files(result(150), tmp_path / "many")
    assert [p.suffix for p in few] == [".md", ".json", ".png"] and [p.suffix for p in many] == [".md", ".json"]
    assert (tmp_path / "few" / few[2].name).read_bytes()[:4] == b"\x89PNG"
    text = many[0].read_text()
    assert "| 149 " in text and "most-confused pairs" in text  # the table says what no picture shows
    # a confusion matrix is a line a class in the JSON, not a number a line
    assert len(many[1].read_text().splitlines()) < 150 * 14 + 200
    assert json.loads(many[1].read_text())["results"][0]["confusion"][149][0] == 1
    assert json_text({"a": [[1, 2], [3]], "b": 1}) == '{\n "a": [\n  [1, 2],\n  [3]\n ],\n "b": 1\n}'


@pytest.fixture(scope="module")
def imagenet_head(tmp_path_factory):
    """A 1,000-class head with ImageNet's class names, as the released nets carry them; its biases favour class
    500 (in no folder below) and the folders' classes, so that 1000-way and subset scores differ."""
    model = tiny(num_classes=1000, seed=1)
    with torch.no_grad():
        bias = model.get_classifier().bias
        bias[500] += 3.0
        bias[[0, 1, 999]] += 2.0
    return model, save_net(model, tmp_path_factory.mktemp("w") / "in1k.safetensors", P.imagenet_classes())


def test_imagenet_subset_of_wordnet_id_folders_against_a_1000_class_head(imagenet_head, tmp_path, capsys):
    model, weights = imagenet_head
    wnids = ["n01440764", "n01443537", "n15075141"]  # tench 0, goldfish 1, toilet tissue 999
    data = make_folder(tmp_path / "subset", wnids, per_class=3)
    assert imagenet_wnids()[:2] == wnids[:2] and imagenet_wnids()[999] == wnids[2]
    assert sorted({y for _, y in bare_folder_samples(data, weights_net(str(weights)))}) == [0, 1, 999]
    argv = [
        "--weights",
        str(weights),
        "--data",
        str(data),
        *CENTER_32_CPU,
        "--json",
    ]
    assert run_eval_cli(parse(add_eval_arguments, argv)) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    probs, _ = by_hand(model, data, wnids)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 999, 999, 999])
    full_top1 = (probs.argmax(1) != labels).float().mean().item()
    full_top5 = 1 - (probs.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item()
    sub = torch.tensor([0, 1, 999])[probs[:, [0, 1, 999]].argmax(1)]
    sub_top1 = (sub != labels).float().mean().item()
    assert report["subset"] == [0, 1, 999] and report["subset_k"] == 3
    assert row["top1_err"] == pytest.approx(full_top1) and row["top5_err"] == pytest.approx(full_top5)
    assert row["subset_top1_err"] == pytest.approx(sub_top1) and row["subset_top5_err"] == 0.0  # top-3 of 3
    assert sub_top1 < full_top1  # class 500, in no folder, takes images only in the 1000-way scores
    assert [c["class"] for c in row["per_class"]] == ["tench", "goldfish", "toilet tissue"]


def test_a_folder_of_all_1000_wordnet_ids_and_one_of_other_names(imagenet_head, tmp_path):
    _, weights = imagenet_head
    net = weights_net(str(weights))
    root = tmp_path / "in1k"
    tiny_png = tmp_path / "x.png"
    Image.fromarray(pixels(0).numpy()).save(tiny_png)
    for w in imagenet_wnids():
        (root / w).mkdir(parents=True)
        (root / w / "x.png").symlink_to(tiny_png)
    assert [y for _, y in bare_folder_samples(root, net)] == list(range(1000))
    bad = make_folder(tmp_path / "bad", ["cats", "dogs"], per_class=1)
    with pytest.raises(ValueError, match=r"bad.*neither the class names.*WordNet ids.*name the folders"):
        bare_folder_samples(bad, net)


def test_predict_prints_imagenet_names_and_wordnet_ids(imagenet_head, tmp_path, capsys):
    model, weights = imagenet_head
    img = make_folder(tmp_path / "imgs", ["x"], per_class=1) / "x" / "0.png"
    probs, _ = by_hand(model, tmp_path / "imgs", ["x"])
    best = int(probs[0].argmax())
    name, wnid = P.imagenet_classes()[best], imagenet_wnids()[best]
    argv = [
        "--weights",
        str(weights),
        str(img),
        "--top",
        "2",
        *CENTER_32_CPU,
    ]
    assert run_predict_cli(parse(add_predict_arguments, argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"  1. {wnid} {name} ") and len(lines) == 3
    # weights that carry no class names but have 1,000 classes are ImageNet's too
    model.pretrained_cfg = P.normalization_cfg("imagenet", crop=32)[0]
    vggnet.save_weights(model, tmp_path / "bare.safetensors")
    argv[1] = str(tmp_path / "bare.safetensors")
    assert run_predict_cli(parse(add_predict_arguments, argv + ["--json"])) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert (top["label"], top["class"], top["wnid"]) == (best, name, wnid)
    # a net whose classes are the ids (trained on ImageNet's folders) is named the same way
    (pred,) = predict(
        model, img, top=1, protocol="center", scales=[32], classes=imagenet_wnids(), device="cpu", amp=False
    )
    assert (pred.labels, pred.names, pred.wnids) == ([best], [name], [wnid])


def test_every_row_of_a_fusion_has_the_confusion_of_its_posteriors():
    samples = [(pixels(i).permute(2, 0, 1).contiguous(), i % 3) for i in range(9)]
    res = evaluate(
        [tiny(seed=0), tiny(seed=1)],
        samples,
        protocols="center,dense",
        scales=[32],
        flip=False,
        mean=P.IMAGENET_MEAN,
        std=P.IMAGENET_STD,
        device="cpu",
        amp=False,
        return_posteriors=True,
    )
    assert len(res.results) == 6 and res.subset == [0, 1, 2]
    for row in res.results:
        probs = res.posteriors[(row.net, row.protocol)]
        assert torch.equal(row.confusion, confusion_matrix(probs.argmax(1), res.labels, 10))
        assert row.top1_err == pytest.approx(1 - row.confusion.trace().item() / 9)
