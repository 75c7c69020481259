"""The paper's test scales Q (sections 3.2 and 4.2): the one rule that `vgg eval`, `vgg predict` and
`vgg reproduce` share.

- A net trained at a fixed S is tested at Q = S (one scale) or at {S - step, S, S + step} (several), where
  step is the paper's 32 pixels for its 224 crops and proportional to the crop otherwise: ``round(crop / 7)``
  (32 at 224, 18 at 128, 5 at 32). The step is tied to the crop, not to S: the paper uses {224, 256, 288} at
  S = 256 and {352, 384, 416} at S = 384.
- A net trained with scale jittering, S in [Smin, Smax], is tested at Q = (Smin + Smax) / 2 (one scale) or
  at {Smin, (Smin + Smax) / 2, Smax} (several): {256, 384, 512} for [256, 512].

Every Q is at least the crop size (dense evaluation and crops need that much of the image); duplicates are
dropped and the scales are sorted.
"""

from __future__ import annotations


def scale_step(crop_size: int) -> int:
    """The spacing of a fixed-S net's test scales: the paper's 32 at 224 crops, proportional to the crop."""
    return max(1, round(crop_size * 32 / 224))


def eval_scales(scale_min: int, scale_max: int, crop_size: int, multi: bool = True) -> list[int]:
    """The test scales Q of a net trained at S in [``scale_min``, ``scale_max``] (equal for a fixed S).

    >>> eval_scales(256, 256, 224), eval_scales(384, 384, 224), eval_scales(256, 512, 224)
    ([224, 256, 288], [352, 384, 416], [256, 384, 512])
    >>> eval_scales(384, 384, 224, multi=False), eval_scales(256, 512, 224, multi=False)
    ([384], [384])
    """
    if scale_min > scale_max:
        raise ValueError(f"scale_min {scale_min} > scale_max {scale_max}")
    mid = (scale_min + scale_max) // 2
    if not multi:
        qs = [mid]
    elif scale_min == scale_max:
        step = scale_step(crop_size)
        qs = [mid - step, mid, mid + step]
    else:
        qs = [scale_min, mid, scale_max]
    return sorted({max(q, crop_size) for q in qs})


__all__ = ["eval_scales", "scale_step"]
