"""Object localisation (the paper's Appendix A): box-regression nets, their training, both test protocols.

A localisation net is a classification net whose last FC layer predicts a box, (centre x, centre y, width,
height) as fractions of the crop side, instead of class scores: 4 numbers (single-class regression, SCR: one box
shared by all classes) or 4 per class (per-class regression, PCR). It is trained with a Euclidean loss on the
box of the image's class, initialised from a classification run of the same S (no scale jittering), at learning
rate 1e-3, fine-tuning all layers or only the FC layers (the last one initialised at random).

A localisation run is a folder like a training run (config.toml, model.safetensors whose last layer has 4 or
4 x classes outputs, stats.json and classes.json copied from the classification run, metrics.jsonl, checkpoints/
for resume, eval/ for reports) plus ``localize.json`` naming the classification run and the regression.

The rooms: ``nets`` (the config, the box heads, the loss, loading a localisation run), ``training``
(``train_localisation``: the task :class:`Localisation` that the one training engine, :mod:`vggnet.training`,
trains), ``protocols`` (``evaluate_localisation``, greedy merging) and ``tables`` (Tables 8 and
9, and their laptop-scale version in `vgg reproduce`); the command line is ``vggnet.cli.localize``.

Testing (``evaluate_localisation``):

- ``center``: one centre crop at Q, the box of the ground-truth class (the paper's comparison of the variants,
  its Table 8; with several Q, their boxes are averaged);
- ``dense``: the localisation net applied densely to the whole image rescaled to each Q; every location's box
  (the window at stride 32 that the location sees) is rated by the classification net's soft-max score of the
  class at the same location; the boxes of all scales are merged greedily (:func:`merge_boxes`, OverFeat's
  procedure) class by class, and each of the top-5 classes of the classification net (its posteriors averaged
  over locations and scales) gets its best merged box.

A prediction (class, box) is correct when the class is the image's and the box overlaps one of the image's
ground-truth boxes of that class with IoU > 0.5; the top-5 localisation error counts an image as an error when
none of its 5 predictions is correct (ILSVRC); top-1 uses the first prediction only.
"""

from __future__ import annotations

from .nets import (
    FINETUNE,
    IOU_THRESHOLD,
    LOC_FILE,
    MERGE_IOU,
    REGRESSIONS,
    LocConfig,
    box_loss,
    box_outputs,
    load_loc_run,
    load_source,
    localisation_net,
    select_boxes,
)
from .protocols import LocResult, evaluate_localisation, merge_boxes, window_boxes
from .tables import markdown_tables, reproduce_localisation
from .training import BoxDataset, Localisation, collate_boxes, train_localisation, validate_localisation

__all__ = [
    "FINETUNE",
    "IOU_THRESHOLD",
    "LOC_FILE",
    "MERGE_IOU",
    "REGRESSIONS",
    "BoxDataset",
    "LocConfig",
    "LocResult",
    "Localisation",
    "box_loss",
    "box_outputs",
    "collate_boxes",
    "evaluate_localisation",
    "load_loc_run",
    "load_source",
    "localisation_net",
    "markdown_tables",
    "merge_boxes",
    "reproduce_localisation",
    "select_boxes",
    "train_localisation",
    "validate_localisation",
    "window_boxes",
]
