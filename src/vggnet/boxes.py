"""Bounding boxes for localisation (the paper's Appendix A): geometry, the paper's transforms, and box files.

Coordinates are continuous pixel coordinates ``(x0, y0, x1, y1)``: pixel column i covers [i, i + 1), so a box
of the whole W x H image is (0, 0, W, H) and its area is (x1 - x0) * (y1 - y0). The localisation nets predict
the paper's parametrisation, (centre x, centre y, width, height), as fractions of the crop side.

A box follows the pixels through the paper's transforms: the isotropic rescale multiplies x by W'/W and y by
H'/H, a crop subtracts its offset, a horizontal flip of a W-wide image maps x to W - x (and swaps x0 and x1).

Box files, for data sets that are not embedded:

- a CSV of ``image,x0,y0,x1,y1,class`` lines (a header line is optional; ``image`` relative to the CSV's folder
  or absolute; several lines per image for several objects), ``boxes.csv`` at the data set's root;
- PASCAL VOC XML files (ImageNet's CLS-LOC boxes): ``<annotation><object><name>n01440764</name><bndbox><xmin>``
  ..., one per image, beside it (``img.JPEG`` -> ``img.xml``) or in a mirrored ``Annotations/`` tree. VOC
  coordinates are 1-based inclusive pixel indices: (xmin - 1, ymin - 1, xmax, ymax) in ours.

Bad boxes (outside the image, zero or negative area), images without boxes and box lines naming a missing image
are listed and skipped with a count (:class:`BoxReport`), never a crash.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import resolve_data
from .data.boxfile import BOXES_FILE, CSV_HEADER, write_box_csv  # noqa: F401 (part of this module's API)
from .data.embedded import EMBEDDED, boxes_file
from .data.io import rescaled_size
from .data.transforms import AugParams, crop_offsets

# ---- geometry ---------------------------------------------------------------------------------------------------


def area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) xyxy boxes (0 for empty ones)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4): (N, M), xyxy."""
    a, b = a.double(), b.double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """xyxy -> (centre x, centre y, width, height), the paper's box parameters."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(centre x, centre y, width, height) -> xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def rescale_boxes(boxes: torch.Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Boxes of an image of ``size`` (H, W) in the same image resized to ``new_size`` (H', W')."""
    (h, w), (nh, nw) = size, new_size
    f = boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
    return boxes * f


def crop_boxes(boxes: torch.Tensor, top: float, left: float, clip: tuple[int, int] | None = None) -> torch.Tensor:
    """Boxes in the coordinates of a crop at (top, left); with ``clip`` = (crop H, crop W), clipped to the crop."""
    out = boxes - boxes.new_tensor([left, top, left, top])
    if clip is not None:
        h, w = clip
        out = torch.stack(
            [out[..., 0].clamp(0, w), out[..., 1].clamp(0, h), out[..., 2].clamp(0, w), out[..., 3].clamp(0, h)], -1
        )
    return out


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes of an image mirrored horizontally (``width`` wide)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([width - x1, y0, width - x0, y1], -1)


def augment_boxes(boxes: torch.Tensor, height: int, width: int, params: AugParams, crop: int | None) -> torch.Tensor:
    """Boxes of a ``height`` x ``width`` image in the view the paper's transforms make of it with ``params``
    (:meth:`~vggnet.data.transforms.ImageTransform.apply`: rescale to S, crop, flip). Not clipped to the crop."""
    if crop is None:
        nh, nw = rescaled_size(height, width, params.scale)
        top = left = 0
    else:
        nh, nw, top, left = crop_offsets(height, width, params, crop)
    out = crop_boxes(rescale_boxes(boxes, (height, width), (nh, nw)), top, left)
    return flip_boxes(out, crop if crop is not None else nw) if params.flip else out


def box_problem(box: Sequence[float], width: int, height: int, tolerance: float = 1.0) -> str | None:
    """Why a box cannot be used in a ``width`` x ``height`` image (None when it can).

    Boxes that overhang the image by up to ``tolerance`` pixels (rounding in annotation tools) are accepted; the
    caller clips them.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(map(_finite, (x0, y0, x1, y1))):
        return "a coordinate is not a number"
    if x1 <= x0 or y1 <= y0:
        return f"zero or negative area ({x0:g},{y0:g},{x1:g},{y1:g})"
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        return f"outside the {width}x{height} image ({x0:g},{y0:g},{x1:g},{y1:g})"
    return None


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# ---- box files --------------------------------------------------------------------------------------------------


@dataclass
class BoxSample:
    """One image with its class and the boxes of its objects of that class (K, 4) xyxy, in its own pixels."""

    path: str
    label: int
    boxes: torch.Tensor


@dataclass
class BoxReport:
    """What reading boxes skipped, and why (one line per skipped box or image)."""

    skipped: list[str] = field(default_factory=list)
    boxes: int = 0  # boxes kept
    images: int = 0  # images kept

    def add(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")

    def summary(self) -> str:
        text = f"{self.images} images with {self.boxes} boxes"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} (bad boxes, images without boxes, missing images)"
        return text

    def write(self, path: str | os.PathLike) -> None:
        if self.skipped:
            Path(path).write_text("\n".join(self.skipped) + "\n")


def read_box_csv(path: str | os.PathLike) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """A box CSV as {absolute image path: [(class, (x0, y0, x1, y1)), ...]} (lines that do not parse: ValueError)."""
    path = Path(path)
    out: dict[str, list] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#") or (n == 1 and row[0].strip().lower() == "image"):
                continue
            if len(row) != 6:
                raise ValueError(
                    f"{path}:{n}: expected 6 fields (image,x0,y0,x1,y1,class), got {len(row)}; "
                    "fix the line or remove it"
                )
            try:
                box = tuple(float(v) for v in row[1:5])
            except ValueError:
                raise ValueError(f"{path}:{n}: the coordinates {row[1:5]} are not numbers") from None
            image = Path(row[0].strip())
            key = str(image if image.is_absolute() else (path.parent / image))
            out.setdefault(os.path.normpath(key), []).append((row[5].strip(), box))
    return out


Objects = list[tuple[str, tuple[float, float, float, float]]]  # (class, (x0, y0, x1, y1)) of one image


def read_voc_xml(path: str | os.PathLike) -> tuple[Objects, tuple[int, int] | None]:
    """The objects of a PASCAL VOC annotation as [(class, (x0, y0, x1, y1))] in our coordinates, and the
    (width, height) it records (None when absent). A file that is not VOC XML raises ValueError."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{path}: not a readable PASCAL VOC XML file ({e})") from None
    size = None
    s = root.find("size")
    if s is not None and s.findtext("width") and s.findtext("height"):
        size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if bb is None:
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            objects.append((name, (float("nan"),) * 4))
            continue
        objects.append((name, (x0 - 1, y0 - 1, x1, y1)))  # 1-based inclusive -> continuous
    return objects, size


def _voc_file(image: Path, root: Path) -> Path | None:
    beside = image.with_suffix(".xml")
    if beside.is_file():
        return beside
    try:
        rel = image.relative_to(root)
    except ValueError:
        return None
    for base in (root / "Annotations", root.parent / "Annotations"):
        cand = (base / rel).with_suffix(".xml")
        if cand.is_file():
            return cand
        cand = (base / rel.name).with_suffix(".xml")  # a flat Annotations folder (ImageNet's val)
        if cand.is_file():
            return cand
    return None


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - the image loader reports unreadable files
        return None


def attach_boxes(
    samples: Sequence[tuple[str, int]],
    classes: Sequence[str],
    root: str | os.PathLike,
    csv_file: str | os.PathLike | None = None,
    report: BoxReport | None = None,
) -> list[BoxSample]:
    """The (path, label) samples of a data set with their boxes, from a box CSV or VOC XML files.

    ``csv_file`` (default: ``root/boxes.csv`` when it exists) names boxes by image; otherwise each image's VOC
    XML is looked up beside it or in an ``Annotations`` tree. Only the boxes of the image's own class are kept
    (its objects of other classes are not its label). Bad boxes and images without a usable box are skipped and
    listed in ``report``; so are CSV lines naming an image that does not exist.
    """
    root = Path(root)
    report = report if report is not None else BoxReport()
    csv_path = Path(csv_file) if csv_file else (root / BOXES_FILE if (root / BOXES_FILE).is_file() else None)
    table = read_box_csv(csv_path) if csv_path else None
    known = set()
    out: list[BoxSample] = []
    for path, label in samples:
        key = os.path.normpath(str(path))
        known.add(key)
        if table is not None:
            objects, size = table.get(key, []), None
        else:
            xml = _voc_file(Path(path), root)
            if xml is None:
                report.add(str(path), "no box (no line in a box CSV, no VOC XML beside it)")
                continue
            try:
                objects, size = read_voc_xml(xml)
            except ValueError as e:
                report.add(str(path), str(e))
                continue
        size = size or _image_size(str(path))
        if size is None:
            report.add(str(path), "unreadable image")
            continue
        w, h = size
        good = []
        for name, box in objects:
            if name != classes[label] and name != str(label):
                continue
            why = box_problem(box, w, h)
            if why:
                report.add(f"{path} box {box}", why)
                continue
            good.append(
                [min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h)]
            )
        if not good:
            if objects and not any(n == classes[label] or n == str(label) for n, _ in objects):
                report.add(str(path), f"no box of its class {classes[label]!r}")
            elif not objects:
                report.add(str(path), "no box")
            continue
        out.append(BoxSample(str(path), int(label), torch.tensor(good, dtype=torch.float32)))
        report.boxes += len(good)
    if table is not None:
        # lines naming images that are not in the data set: missing files, or images of another split
        for key in table:
            if key not in known and not os.path.exists(key):
                report.add(key, f"named in {csv_path} but the image does not exist")
    report.images = len(out)
    return out


def box_samples(
    spec: str | os.PathLike,
    split: str = "train",
    csv_file: str | os.PathLike | None = None,
    max_per_class: int = 0,
    report: BoxReport | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[BoxSample], list[str]]:
    """The images of split ``train`` or ``val`` of a data spec with their boxes, and the class names.

    ``spec`` is an embedded data set (its boxes are recorded when it is materialised) or a folder with
    ``train/`` and ``val/`` class trees and a box CSV or VOC XML files. ``max_per_class`` keeps the first N
    images of each class (0: all).
    """
    train, val, classes = resolve_data(spec, cache_dir=cache_dir)
    if str(spec) in EMBEDDED:
        root = boxes_file(str(spec), cache_dir).parent
        csv_file = csv_file or root / BOXES_FILE
    else:
        root = Path(spec).expanduser()
    samples = train if split == "train" else val
    if max_per_class:
        seen: dict[int, int] = {}
        kept = []
        for s in samples:
            if seen.get(s[1], 0) < max_per_class:
                kept.append(s)
                seen[s[1]] = seen.get(s[1], 0) + 1
        samples = kept
    return attach_boxes(samples, classes, root, csv_file, report), list(classes)


__all__ = [
    "BOXES_FILE",
    "BoxReport",
    "BoxSample",
    "area",
    "attach_boxes",
    "augment_boxes",
    "box_problem",
    "box_samples",
    "crop_boxes",
    "flip_boxes",
    "iou",
    "read_box_csv",
    "read_voc_xml",
    "rescale_boxes",
    "to_cxcywh",
    "to_xyxy",
    "write_box_csv",
]
