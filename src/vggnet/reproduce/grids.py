"""The grids of `vgg reproduce`: which runs the paper's experiments take, at what size (read by ``plan.py``).

The paper's staged plan (section 3.1) is the same at every size: A and A-LRN from random weights; B, C, D, E
and section 4.1's B-5x5 at the small fixed scale from net A; C, D, E at the large fixed scale from their
small-scale runs with lr / 10; C, D, E with scale jittering fine-tuned from the large-scale runs. A grid says
at what size: the data, the width of the nets, the crop, our scales for the paper's, the epochs (a cap: the
plateau schedule stops a run first) and the settings every run shares.

``small``: the laptop reproduction, designed so that what it compares can differ for the paper's reasons
(the design is ``SMALL_DESIGN``, which the report prints before its results; the reasons and pilots
behind it are in docs/reproduce-design.md).
``quick``: the same code path at a toy size, a plumbing check. ``medium``: the paper's grid on a user's
ImageNet-style subset at 224 crops, for one GPU. (``paper``, the recipes of recipes/imagenet, is built from
the TOML files by ``plan.paper_plan``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The training scales by the paper's names: fixed S = 256, fixed S = 384, jittered [256, 512].
SCALE_LABELS = ("256", "384", "256-512")


@dataclass(frozen=True)
class StageRun:
    """One cell of the staged plan: a net at a training scale (by the paper's label), and where it starts."""

    arch: str
    label: str  # "256", "384" or "256-512" (the paper's names; the grid maps them to its own scales)
    source: tuple[str, str] | None  # (arch, label) of the run it is initialised from; None: random weights
    epochs: int  # at most this many: the plateau schedule normally ends the run earlier
    lr: float
    settings: tuple[tuple[str, Any], ...] = ()  # TrainConfig fields of this stage over the grid's base


def staged_cells(epochs: Sequence[int], lr: float, settings: Sequence[dict[str, Any]] | None = None) -> list[StageRun]:
    """The paper's staged plan: A and A-LRN from random weights (stage 1); B, C, D, E and B-5x5 at the small
    fixed scale from net A (2; B-5x5 takes A's FC layers only, its convs being 5x5); C, D, E at the large
    fixed scale from their small-scale runs with lr / 10 (3); C, D, E with scale jittering, fine-tuned from the
    large-scale runs with lr / 10 (4). ``epochs``: one cap a stage; ``settings``: one dict of TrainConfig
    fields a stage (for example fewer lr decays for the fine-tuning stages)."""
    e1, e2, e3, e4 = epochs
    s1, s2, s3, s4 = (tuple(sorted(s.items())) for s in (settings or [{}] * 4))
    cells = [StageRun("A", "256", None, e1, lr, s1), StageRun("A-LRN", "256", None, e1, lr, s1)]
    cells += [StageRun(a, "256", ("A", "256"), e2, lr, s2) for a in ("B", "C", "D", "E", "B-5x5")]
    cells += [StageRun(a, "384", (a, "256"), e3, lr / 10, s3) for a in ("C", "D", "E")]
    cells += [StageRun(a, "256-512", (a, "384"), e4, lr / 10, s4) for a in ("C", "D", "E")]
    return cells


@dataclass(frozen=True)
class Grid:
    """A grid: the staged cells, our scales for the paper's, the settings every run shares."""

    name: str
    description: str
    seeds: tuple[int, ...]
    scales: dict[str, tuple[int, int]]  # paper label -> our (Smin, Smax)
    cells: tuple[StageRun, ...]
    base: dict[str, Any]  # TrainConfig fields shared by every run
    subset: tuple[int, int] | None = None  # train on the first N train / M val images of each class (quick)
    needs_data: bool = False  # the user names the data (--data DIR): medium
    device: str = "cpu"  # the default device


# ---------------------------------------------------------------------------------------------------------------
# small: the laptop reproduction

SMALL_DESIGN = """\
The small grid is designed so that the comparisons can come out the way the paper's did, for the paper's
reasons, on 2 CPU cores (each choice with its reason and pilot: docs/reproduce-design.md in vggnet's repository):

- **Geometry: 64-pixel crops.** A block's convs work on the crop divided by 2 per pool before them: at 224
  the paper's block 5 convs see 14x14 maps; at 64 ours see 4x4 (block 4: 8x8, block 3: 16x16), so the extra
  3x3 convs of D and E see more than zero padding. Dense windows (64 pixels at a stride of 32) overlap by 50%
  (the paper: 86%).
- **Scales: the paper's divided by 4.** S = 64 for 256, S = 96 for 384, jittered [64, 128] for [256, 512];
  test scales by the rule of `vggnet.scales` ({S - 9, S, S + 9} for a fixed S at 64 crops, {Smin, middle,
  Smax} when jittered; none below the crop). The pools round up (Caffe's ceil mode), so dense evaluation at
  any Q covers the whole image.
- **Data: mnist-clutter,** the embedded digits on 128x128 canvases over windows of real photos, with
  fragments of other digits as clutter and the digit's size varying by a factor 3: not saturated (a net
  has to find the digit among strokes like its own), and scale jittering has sizes to act on.
- **Nets: 1/16 width** (4-8-16-32-32 channels), FC layers 128 wide, batch 32, lr 0.01, Kaiming init, no
  dropout, no flips (digits are not mirror-symmetric). Decoded images stay in memory and training runs
  channels-last: both change the time, not the result.
- **Every run stops at its plateau:** the paper's schedule (lr / 10 when the validation error stopped
  improving, at most 2 times, once in the fine-tuning stages 3 and 4, then stop at the next plateau), with
  "stopped improving" decided by the trend rule (docs/plateau.md): the least-squares line through the last 5
  epochs at the current rate does not fall by more than 0.1 points. The epoch counts are caps that a run
  should not reach; the report counts the runs still improving at their last epoch (by the same rule) and
  those that reached their cap.
- **Dense windows:** a window of the dense score map whose centre lies beyond the image's edge does not count;
  with 64-pixel crops no window's centre ever does, so this changes nothing in this grid.
"""

_SMALL_BASE: dict[str, Any] = dict(
    data="mnist-clutter",
    crop_size=64,
    fc_width=128,
    width=0.0625,
    flip=False,
    init="kaiming",
    dropout=0.0,
    batch_size=32,
    colour_shift=0.1,
    normalize="mean",
    lr_decays=2,
    stats_images=1000,
    workers=0,
    log_every=50,
    tensorboard=False,
    cache_images=True,
)
_SMALL_SCALES = {"256": (64, 64), "384": (96, 96), "256-512": (64, 128)}  # the paper's divided by 4
# fine-tuning stages start at lr / 10: one decay (to lr / 100) before the plateau that ends them
_FINE_TUNE = {"lr_decays": 1}

# ---------------------------------------------------------------------------------------------------------------
# medium: the paper's grid on a user's ImageNet-style subset (Imagenette, ImageNet-100, ...), one GPU

# the paper's recipe (TrainConfig's defaults: batch 256, dropout 0.5, flips, colour shift) at its 224 crops
_MEDIUM_BASE: dict[str, Any] = dict(crop_size=224, tensorboard=False, log_every=100)
MEDIUM_EPOCHS = 74  # the paper's cap; the plateau schedule stops a run earlier

GRIDS: dict[str, Grid] = {
    "small": Grid(
        name="small",
        description="embedded mnist-clutter digits (4,000 train / 1,000 val, 10 classes, 128x128 over photo "
        "backgrounds with digit fragments as clutter), nets at 1/16 width with 128-wide FC layers "
        "and 64-pixel crops, every scale divided by 4; each run stops at its plateau",
        seeds=(0, 1, 2),
        scales=_SMALL_SCALES,
        cells=tuple(staged_cells(epochs=(40, 40, 20, 20), lr=0.01, settings=[{}, {}, _FINE_TUNE, _FINE_TUNE])),
        base=_SMALL_BASE,
    ),
    "quick": Grid(
        name="quick",
        description="a plumbing check, not a measurement: the small grid's runs and evaluations with one seed, "
        "on 60 training and 20 validation images a class, one or two epochs a stage",
        seeds=(0,),
        scales=_SMALL_SCALES,
        cells=tuple(staged_cells(epochs=(2, 1, 1, 1), lr=0.01)),
        base=dict(_SMALL_BASE, stats_images=300),
        subset=(60, 20),
    ),
    "medium": Grid(
        name="medium",
        description="the paper's grid on an ImageNet-style subset (train/ and val/ class folders) at the paper's "
        "224 crops and scales, full-width nets, one GPU; each run stops at its plateau (at most "
        f"{MEDIUM_EPOCHS} epochs)",
        seeds=(0,),
        scales={"256": (256, 256), "384": (384, 384), "256-512": (256, 512)},
        cells=tuple(staged_cells(epochs=(MEDIUM_EPOCHS,) * 4, lr=0.01, settings=[{}, {}, _FINE_TUNE, _FINE_TUNE])),
        base=_MEDIUM_BASE,
        needs_data=True,
        device="auto",
    ),
}

__all__ = ["GRIDS", "Grid", "MEDIUM_EPOCHS", "SCALE_LABELS", "SMALL_DESIGN", "StageRun", "staged_cells"]
