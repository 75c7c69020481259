"""The data set over (path, class index) samples, its collate functions, and the sampler of seeded keys.

Randomness contract: ``ImageDataset[(index, seed)]`` draws every random number of that sample's augmentation
(S, crop position, flip, colour alpha) from ``torch.Generator().manual_seed(seed)``, never from global or
worker RNG state, so the same (index, seed) gives a bit-identical tensor in any process, worker or rank. The
training loop gets such keys from its batch plan (``vggnet.training.BatchPlan``: a seeded permutation and one
seed per sample, per epoch), so resuming an epoch, or splitting it over any number of workers and ranks,
reproduces every sample exactly. :class:`SeededSampler` yields keys by the same rule (:func:`epoch_keys`) one at
a time, for a plain ``DataLoader``. A plain int index draws from torch's global RNG
instead, like any torchvision transform (not reproducible across worker counts; for evaluation transforms,
which draw nothing, it makes no difference).

:class:`DecodedImages` is the test-time protocols' data set: it only decodes (to uint8), because evaluation
rescales each image on the device to several test scales Q.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from .io import BadImageError, Source, load_image, to_image

log = logging.getLogger(__name__)
_reported: set[str] = set()  # bad files already logged by this process: once per run, not once per epoch

Sample = tuple[str, int]
Item = tuple[torch.Tensor | None, int, str]


def epoch_keys(n: int, seed: int, epoch: int) -> tuple[list[int], list[int]]:
    """The one rule for an epoch's data order and augmentation seeds: (a permutation of range(n), one seed per
    position of it), drawn from (seed, epoch) alone. Training's batch plan and :class:`SeededSampler` both use it."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
    return order, seeds


class ImageDataset(Dataset):
    """Images from a list of (path, class index) samples, through a transform.

    ``dataset[key]`` returns ``(image, label, path)``: ``key`` is an index, or an (index, seed) pair whose seed
    alone determines the augmentation (see the module docstring). ``image`` is None when the file is bad
    (unreadable, truncated, not an image, too large); it is then logged as a warning naming the file, and
    :func:`collate` drops it and reports its path.

    Args:
        samples: (path, class index) pairs, e.g. from :func:`~vggnet.data.resolve_data`.
        transform: called as ``transform(path, generator)`` and returning a tensor, e.g. a
            :class:`~vggnet.data.TrainTransform` or :class:`~vggnet.data.EvalTransform`. None returns the
            decoded (3, H, W) uint8 image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[str, torch.Generator | None], torch.Tensor] | None = None,
        warn: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.warn = warn  # False: the caller reports the bad files it collects (training does, once per run)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            generator = torch.Generator().manual_seed(seed)
        else:
            index, generator = int(key), None
        path, label = self.samples[index]
        try:
            image = self.transform(path, generator) if self.transform else load_image(path)
        except BadImageError as e:
            if self.warn and str(path) not in _reported:
                _reported.add(str(path))
                log.warning("skipping bad image %s: %s", path, e.reason)
            return None, int(label), str(path)
        return image, int(label), str(path)


class DecodedImages(Dataset):
    """(image source, label) samples decoded to uint8 (3, H, W) for the test-time protocols.

    ``dataset[i]`` is ``(i, image, label, error)``: a source is a file path (decoded with ``min_side``, see
    :func:`~vggnet.data.load_image`) or an image already in memory (see :func:`~vggnet.data.to_image`). A file
    that cannot be decoded yields image None and the reason, never an exception, so that an evaluation skips it
    and names it in its report.
    """

    def __init__(self, items: Sequence[tuple[Source, int]], min_side: int | None = None) -> None:
        self.items = items
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        src, label = self.items[i]
        if isinstance(src, (str, os.PathLike)):
            try:
                return i, load_image(src, min_side=self.min_side), int(label), None
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip the file and report it
                return i, None, int(label), f"{src}: {type(e).__name__}: {e}"
        return i, to_image(src), int(label), None


def _split(batch: Sequence[Item]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    good = [item for item in batch if item[0] is not None]
    bad = [item[2] for item in batch if item[0] is None]
    labels = torch.tensor([item[1] for item in good], dtype=torch.int64)
    return [item[0] for item in good], labels, bad


def collate(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack a batch of same-size items: (images [N, 3, H, W], labels int64 [N], paths of the bad files).

    Bad items (image None) are dropped, so N can be smaller than the batch, even 0 (then images is an empty
    (0, 3, 0, 0) tensor).
    """
    images, labels, bad = _split(batch)
    if not images:
        return torch.empty(0, 3, 0, 0), labels, bad
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(
            f"collate needs images of one size, got {sorted(shapes)}; use collate_list for whole "
            f"images of varying size (EvalTransform with crop_size=None)"
        )
    return torch.stack(images), labels, bad


def collate_list(batch: Sequence[Item]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Like :func:`collate`, but the images stay a list (whole images of varying size, for dense evaluation)."""
    return _split(batch)


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields (index, seed) keys for :class:`ImageDataset`: a seeded shuffle per epoch, sharded over ranks.

    The order of an epoch and the seed of each sample depend only on (seed, epoch) and (seed, epoch, index),
    never on the rank, the number of ranks or workers: with ``world_size`` ranks each takes every
    ``world_size``-th key (padded by wrapping around, as torch's DistributedSampler), so rank r's batch b of
    size B, over all ranks, is exactly batch b of size B * world_size of a single process.

    Args:
        num_samples: length of the data set.
        seed: the run's seed.
        shuffle: shuffle per epoch (False: index order, each index keeping its seed of the epoch).
        rank: this process's shard ...
        world_size: ... of this many.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; ``start`` skips this rank's first keys (to resume within an epoch)."""
        self.epoch, self.start = epoch, start

    def _per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = self.num_samples
        order, seeds = epoch_keys(n, self.seed, self.epoch)
        keys = list(zip(order, seeds)) if self.shuffle else sorted(zip(order, seeds))
        total = self._per_rank() * self.world_size
        if n and total > n:
            keys += (keys * math.ceil((total - n) / n))[: total - n]
        yield from keys[self.rank : total : self.world_size][self.start :]
