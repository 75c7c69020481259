"""The paper's test-time protocols (sections 3.2 and 4.4) as one mechanism: average soft-max posteriors over views.

A *view* is (net, test scale Q, flip, whole image or crop). The test image is isotropically rescaled so that its
smaller side is Q, then:

- ``dense``: the whole, uncropped image through the fully convolutional net, the score map spatially averaged;
- ``multicrop``: a 5x5 regular grid of crops from edge to edge, and of the flipped image: 50 views per scale;
- ``center``: the classic single centre crop at each Q, never flipped: the one-view baseline (torchvision's
  "resize 256, centre crop 224" at the paper's S = 256);
- ``dense+multicrop``: the dense and the multi-crop posteriors averaged (Table 5's best row).

Multi-scale: several Q; fusion: several nets (Table 6). Default test scales follow the paper
(``vggnet.scales.eval_scales``, the rule `vgg reproduce` uses too): Q = {S - 32, S, S + 32} for a net trained at
a fixed S with 224 crops (the step proportional to the crop, round(crop / 7), for smaller nets), and
Q = {Smin, (Smin + Smax)/2, Smax} for a net trained with scale jittering; single-scale evaluation uses S or
(Smin + Smax)/2. Every Q is clamped to at least the crop size and duplicates are dropped, so a tiny net trained
at S = crop = 32 is tested at {32, 37}.

The rooms:

- ``nets``: ``Net`` (a model with its normalisation, classes and training scales), ``as_net(s)``, ``weights_net``;
- ``protocols``: the protocol names and each net's test scales;
- ``views``: the views of a rescaled image and their averaged posteriors (dense, multi-crop, centre);
- ``samples``: which labelled images a net is evaluated on (a run's own validation data, a folder);
- ``driver``: ``evaluate`` and ``posteriors``: decoding, every net at every Q, fusion, the error counts;
- ``results``: ``EvalResult`` / ``ProtocolResult`` (top-1 / top-5 error, per-class accuracy, the confusion matrix
  and most-confused pairs, errors among an ImageNet subset's own classes), the report files; ``prediction``:
  the top classes of images.

Preprocessing (decoding, rescaling to Q, the input convention of vggnet.convention, the centre crop) and folder
scanning live in
``vggnet.data``; the device and precision in ``vggnet.runtime``; the command line in ``vggnet.cli.evaluate``.
"""

from __future__ import annotations

from ..data.folders import folder_samples
from ..data.transforms import center_crop, prepare_images
from .driver import DEFAULT_BATCH_SIZE, evaluate, net_posteriors, posteriors
from .nets import FUSED, Net, as_net, as_nets, weights_net
from .prediction import Prediction, predict
from .protocols import PROTOCOLS, parse_protocols, parse_scales, resolve_scales
from .results import EvalResult, ProtocolResult, write_eval_files, write_eval_report
from .samples import bare_folder_samples, resolve_eval_samples
from .views import (
    GRID,
    VIEW_KINDS,
    center_posteriors,
    crop_posteriors,
    dense_posteriors,
    grid_crops,
    grid_offsets,
    multicrop_posteriors,
    softmax_mean,
    with_flip,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FUSED",
    "GRID",
    "PROTOCOLS",
    "VIEW_KINDS",
    "EvalResult",
    "Net",
    "Prediction",
    "ProtocolResult",
    "as_net",
    "as_nets",
    "bare_folder_samples",
    "center_crop",
    "center_posteriors",
    "crop_posteriors",
    "dense_posteriors",
    "evaluate",
    "folder_samples",
    "grid_crops",
    "grid_offsets",
    "multicrop_posteriors",
    "net_posteriors",
    "parse_protocols",
    "parse_scales",
    "posteriors",
    "predict",
    "prepare_images",
    "resolve_eval_samples",
    "resolve_scales",
    "softmax_mean",
    "weights_net",
    "with_flip",
    "write_eval_files",
    "write_eval_report",
]
