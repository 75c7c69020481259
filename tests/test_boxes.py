"""Boxes: IoU, the paper's transforms (a box follows the pixels), box files, bad boxes, the embedded boxes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet import boxes as B
from vggnet.data import AugParams, TrainTransform, materialise, rescale
from vggnet.data.embedded import boxes_file


def ink_box(x: torch.Tensor, threshold: float) -> list[int]:
    """The bounding box (x0, y0, x1, y1) of the pixels of channel 0 above ``threshold``."""
    a = (x[0] > threshold).numpy()
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_iou_of_hand_made_boxes():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [0, 0, 10, 5], [2, 2, 3, 3]])
    got = B.iou(a, b)[0].tolist()
    assert got == pytest.approx([1.0, 50 / 150, 0.0, 0.5, 0.01])
    # the criterion is strict: IoU > 0.5 (a half-box is not a hit)
    assert not (B.iou(a, b[3:4]) > 0.5).item()
    assert B.iou(torch.tensor([[0.0, 0, 0, 10]]), a).item() == 0  # zero-area: no overlap, no NaN


def test_cxcywh_round_trip():
    xyxy = torch.tensor([[1.0, 2, 5, 10], [0, 0, 3, 3]])
    assert torch.allclose(B.to_cxcywh(xyxy), torch.tensor([[3.0, 6, 4, 8], [1.5, 1.5, 3, 3]]))
    assert torch.allclose(B.to_xyxy(B.to_cxcywh(xyxy)), xyxy)


@pytest.mark.parametrize(
    "scale, top, left, flip",
    [(80, 0.3, 0.7, False), (80, 0.3, 0.7, True), (48, 0.0, 1.0, True), (120, 0.9, 0.1, False)],
)
def test_a_box_follows_the_pixels(scale, top, left, flip):
    # a white rectangle on black: after the paper's rescale, crop and flip, the transformed box is the rectangle's
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[:, 10:22, 15:35] = 255
    box = torch.tensor([[15.0, 10, 35, 22]])
    params = AugParams(scale=scale, top=top, left=left, flip=flip)
    tf = TrainTransform(None, crop_size=48, scale=scale, flip=True, colour_std=0)
    x = tf.apply(img, params)  # pixels / 255
    got = B.augment_boxes(box, 40, 60, params, 48)[0]
    clipped = B.crop_boxes(got[None], 0, 0, clip=(48, 48))[0]
    # half-intensity edges: within a rescaled pixel (plus the crop's half-pixel rounding) of the drawn box
    assert clipped.tolist() == pytest.approx(ink_box(x, 0.5), abs=1.0)
    # the whole image (dense testing): no crop
    full = rescale(img, scale).float() / 255
    if flip:
        full = full.flip(-1)
    got = B.augment_boxes(box, 40, 60, params, None)[0]
    assert got.tolist() == pytest.approx(ink_box(full, 0.5), abs=1.0)


def test_rescale_and_flip_are_exact():
    box = torch.tensor([[2.0, 4, 6, 8]])
    assert B.rescale_boxes(box, (10, 20), (20, 40)).tolist() == [[4.0, 8, 12, 16]]
    assert B.flip_boxes(box, 10).tolist() == [[4.0, 4, 8, 8]]
    assert B.flip_boxes(B.flip_boxes(box, 10), 10).tolist() == box.tolist()


def test_box_problems():
    assert B.box_problem((0, 0, 10, 10), 10, 10) is None
    assert B.box_problem((-0.5, 0, 10.5, 10), 10, 10) is None  # rounding overhang is tolerated
    assert "zero or negative area" in B.box_problem((3, 3, 3, 8), 10, 10)
    assert "outside" in B.box_problem((0, 0, 30, 8), 10, 10)
    assert "not a number" in B.box_problem((float("nan"), 0, 3, 3), 10, 10)


def make_folder(root: Path) -> list[tuple[str, int]]:
    samples = []
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            p = root / cls / f"{i}.png"
            Image.new("RGB", (40, 30)).save(p)
            samples.append((str(p), c))
    return samples


def test_csv_boxes_skip_bad_ones_with_a_count(tmp_path):
    samples = make_folder(tmp_path)
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(B.CSV_HEADER)
        w.writerow(["cat/0.png", 1, 2, 20, 25, "cat"])
        w.writerow(["cat/0.png", 5, 5, 9, 9, "cat"])  # two objects
        w.writerow(["cat/1.png", 5, 5, 5, 9, "cat"])  # zero area
        w.writerow(["cat/2.png", 0, 0, 400, 9, "cat"])  # outside the 40x30 image
        w.writerow(["dog/0.png", 0, 0, 10, 10, "dog"])
        w.writerow(["dog/1.png", 0, 0, 10, 10, "cat"])  # another class's object only
        w.writerow(["dog/missing.png", 0, 0, 10, 10, "dog"])  # no such image
        # dog/2.png: no line at all
    report = B.BoxReport()
    got = B.attach_boxes(samples, ["cat", "dog"], tmp_path, report=report)
    assert [(Path(s.path).name, s.label, len(s.boxes)) for s in got] == [("0.png", 0, 2), ("0.png", 1, 1)]
    assert got[0].boxes[0].tolist() == [1, 2, 20, 25]
    assert (report.images, report.boxes, len(report.skipped)) == (2, 3, 5)
    text = "\n".join(report.skipped)
    for why in (
        "zero or negative area",
        "outside the 40x30 image",
        "no box of its class 'dog'",
        "no box",
        "the image does not exist",
    ):
        assert why in text


def test_csv_with_a_bad_line_names_it(tmp_path):
    (tmp_path / "b.csv").write_text("a.png,1,2,3\n")
    with pytest.raises(ValueError, match=r"b.csv:1: expected 6 fields"):
        B.read_box_csv(tmp_path / "b.csv")


def test_voc_xml_boxes(tmp_path):
    samples = make_folder(tmp_path)
    (tmp_path / "cat" / "0.xml").write_text(
        "<annotation><size><width>40</width><height>30</height></size>"
        "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (tmp_path / "Annotations" / "dog").mkdir(parents=True)
    (tmp_path / "Annotations" / "dog" / "1.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>10</xmax><ymax>12</ymax>"
        "</bndbox></object></annotation>"
    )
    (tmp_path / "dog" / "2.xml").write_text("not xml")
    report = B.BoxReport()
    got = B.attach_boxes(samples, ["cat", "dog"], tmp_path, report=report)
    assert [s.boxes.tolist() for s in got] == [[[0, 0, 20, 30]], [[2, 3, 10, 12]]]  # 1-based inclusive -> ours
    assert report.images == 2 and len(report.skipped) == 4  # cat/1, cat/2, dog/0 without XML; dog/2 unreadable
    assert any("not a readable PASCAL VOC XML" in s for s in report.skipped)


@pytest.mark.slow
def test_embedded_mnist_scale_boxes_hold_the_digits(tmp_path):
    path = boxes_file("mnist-scale", tmp_path)
    root = materialise("mnist-scale", tmp_path)
    assert path == root / "boxes.csv"
    samples, classes = B.box_samples("mnist-scale", "val", max_per_class=3, cache_dir=tmp_path)
    assert len(samples) == 30 and classes == [str(d) for d in range(10)]
    for s in samples:
        a = np.asarray(Image.open(s.path)) > 0
        rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
        x0, y0, x1, y1 = s.boxes[0].tolist()
        assert x0 <= cols[0] and y0 <= rows[0] and cols[-1] < x1 and rows[-1] < y1  # all the ink is inside
        assert 16 <= max(x1 - x0, y1 - y0) <= 48  # the drawn size: 16..48 on the longer side
    # a folder materialised before boxes existed gets them on first use, the same
    path.unlink()
    assert boxes_file("mnist-scale", tmp_path).read_text().count("\n") == 5001
