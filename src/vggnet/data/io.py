"""Reading one image file into an RGB uint8 tensor, and the paper's isotropic rescale.

Decoding picks the fastest correct decoder per file:

- JPEG (RGB, grayscale or CMYK): ``torchvision.io.decode_jpeg`` (libjpeg-turbo, about 1.5x Pillow's decode),
  or, when the caller needs a smallest side of at most half the image's, Pillow with ``draft()``, which lets
  libjpeg decode at 1/2, 1/4 or 1/8 of the size in the DCT domain for a fraction of the cost. The draft never
  goes below the requested side, so no detail the rescale would keep is lost.
- anything else Pillow opens (PNG, BMP, GIF, WebP, TIFF, ...): Pillow, converted to RGB. Alpha is dropped
  (Pillow's ``convert("RGB")``, as torchvision's ImageFolder loader does); 16-bit images keep their high byte.

Pixels are not rotated by EXIF orientation (torchvision's ImageFolder does not either).

Every failure to read or decode a file (missing, empty, truncated, not an image, larger than Pillow's
``Image.MAX_IMAGE_PIXELS``) raises :class:`BadImageError`, so a data set can skip the file and name it.
"""

from __future__ import annotations

import io
import math
import os
import sys
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def __getattr__(name: str):
    """``decode_jpeg`` and ``ImageReadMode``: torchvision's, imported on first use (the GPU data path's batched
    decoder); None without them (torchvision 0.29 deprecated its decoders for TorchCodec). Importing torchvision
    costs 1.3-5 s (it pulls in torch._dynamo), so `vgg predict` and `vgg eval` on the CPU do not (issue 26)."""
    if name in ("decode_jpeg", "ImageReadMode"):
        try:
            from torchvision import io as tv_io

            value = getattr(tv_io, name)
        except (ImportError, AttributeError):
            value = None
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loaded_jpeg_decoder():
    """torchvision's JPEG decoder when torchvision is already imported (by the training or GPU data path), else
    None: Pillow then decodes. Both give the same pixels (libjpeg-turbo, tested), so importing torchvision only
    for its decoder, which saves little on the CPU, is not worth its start-up."""
    if "torchvision.io" not in sys.modules:
        return None
    return __getattr__("decode_jpeg") if "decode_jpeg" not in globals() else globals()["decode_jpeg"]


# Modes whose JPEGs torchvision's decoder turns into RGB exactly as Pillow does (checked in the tests).
_TV_JPEG_MODES = ("RGB", "L", "CMYK")
# Pillow modes that hold 16 (or 32) bit integers: Pillow's own convert("RGB") clips these to 255 instead of
# scaling them, so they are scaled here (the high byte of a 16-bit value).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# An image as the test-time protocols take it: a file path, or pixels already in memory (a uint8 tensor, a
# numpy array, a PIL image; see to_image).
Source = str | os.PathLike | torch.Tensor | np.ndarray


class BadImageError(ValueError):
    """A file that cannot be used as an image: unreadable, empty, truncated, not an image, or too large."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"bad image {self.path}: {reason}")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file; raises :class:`BadImageError` when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(path, f"cannot read the file ({e.strerror or e})") from e
    if not data:
        raise BadImageError(path, "the file is empty (0 bytes)")
    return data


# Pillow warns (DecompressionBombWarning) on opening an image above MAX_IMAGE_PIXELS; _open refuses those
# images itself with a BadImageError that the data set reports once, so the warning would only repeat it on
# every epoch and in every worker. One filter, set once at import (filters are process-global, not per call).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _open(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Open an image lazily (header only) and refuse decompression bombs before anything is decoded."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImageError(path, f"too large, possibly a decompression bomb ({e})") from e
    except Exception as e:  # Pillow raises many types on garbage: OSError, SyntaxError, ValueError, ...
        raise BadImageError(path, f"not an image Pillow can open ({type(e).__name__}: {e})") from e
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a data loader should not decode such an image
    # either (hundreds of MB per image, per worker), so it is bad here. (Checked by hand rather than by turning
    # the warning into an error: warning filters are process-global and not thread-safe.)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:
        im.close()
        raise BadImageError(
            path,
            f"too large, possibly a decompression bomb ({im.width}x{im.height} pixels, more "
            f"than PIL.Image.MAX_IMAGE_PIXELS = {limit})",
        )
    return im


class ImageHeader(NamedTuple):
    format: str  # Pillow's name: "JPEG", "PNG", ...
    mode: str  # Pillow's mode: "RGB", "L", "CMYK" (CMYK and YCCK JPEGs), ...
    height: int
    width: int


def header(data: bytes, path: str | os.PathLike = "<bytes>") -> ImageHeader:
    """Format, mode and size of encoded image bytes, from the header alone; :class:`BadImageError` if bad."""
    with _open(data, path) as im:
        return ImageHeader(im.format or "", im.mode, im.height, im.width)


def _pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """A decoded Pillow image as a (3, H, W) uint8 RGB tensor."""
    if im.mode in _WIDE_MODES:
        a = np.asarray(im)
        if a.dtype == np.int32:  # mode "I": Pillow's mode for 16-bit grayscale PNGs in some versions
            a = np.clip(a, 0, 65535)
        a = (a >> 8).astype(np.uint8)
        a = np.repeat(a[:, :, None], 3, axis=2)
    else:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # Pillow wants palette transparency resolved through RGBA first
        if im.mode != "RGB":
            im = im.convert("RGB")
        a = np.asarray(im)
    # np.asarray of a Pillow image is read-only and torch wants a writable buffer: copy. The copy stays HWC in
    # memory (a channels-last view, like decode_jpeg's output), the layout torch's uint8 resampling is fast on.
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)


def decode_bytes(
    data: bytes | bytearray, path: str | os.PathLike = "<bytes>", min_side: int | None = None
) -> torch.Tensor:
    """Decode encoded image bytes to a (3, H, W) uint8 RGB tensor.

    Args:
        data: the file's bytes.
        path: used in error messages only.
        min_side: the smallest side the caller will rescale to. A JPEG at least twice as large is decoded at
            a reduced size (1/2, 1/4 or 1/8) whose smaller side is still >= ``min_side``; None decodes at
            full size.

    Raises:
        BadImageError: the bytes are not a decodable image, or it has more than ``Image.MAX_IMAGE_PIXELS``.
    """
    im = _open(data, path)
    try:
        h, w = im.height, im.width
        if im.format == "JPEG" and im.mode in _TV_JPEG_MODES:
            if min_side and min(h, w) >= 2 * min_side:
                f = min_side / min(h, w)
                im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
                return _pil_to_tensor(im)
            decoder = _loaded_jpeg_decoder()
            if decoder is None:
                return _pil_to_tensor(im)
            try:
                # frombuffer wants a writable buffer (it warns on bytes); the copy costs microseconds
                buf = data if isinstance(data, bytearray) else bytearray(data)
                return decoder(torch.frombuffer(buf, dtype=torch.uint8), mode=__getattr__("ImageReadMode").RGB)
            except RuntimeError:
                pass  # e.g. a JPEG flavour libjpeg-turbo's torchvision build refuses: let Pillow try below
        im.load()
        return _pil_to_tensor(im)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(path, f"cannot decode ({type(e).__name__}: {e})") from e
    finally:
        im.close()


def load_image(path: str | os.PathLike, min_side: int | None = None) -> torch.Tensor:
    """Read an image file as a (3, H, W) uint8 RGB tensor (grayscale, CMYK, alpha, 16-bit become RGB uint8).

    ``min_side`` allows a reduced-size JPEG decode (see :func:`decode_bytes`). Raises :class:`BadImageError`
    for a missing, empty, truncated or non-image file and for images above Pillow's ``MAX_IMAGE_PIXELS``.
    """
    return decode_bytes(read_bytes(path), path, min_side)


def rescaled_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) of an image isotropically rescaled so that its smaller side is ``size``."""
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def rescale(img: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropically rescale (..., H, W) so that its smaller side is ``size`` (bilinear, antialiased).

    uint8 stays uint8 (torch's vectorised uint8 kernel on the CPU; through float32 on other devices, whose
    antialiased kernels take floating point only); floating point stays floating point.
    """
    h, w = img.shape[-2:]
    if min(h, w) == size:
        return img
    nh, nw = rescaled_size(h, w, size)
    native = img.is_floating_point() or img.device.type == "cpu"
    x = img if native else img.float()
    batched = x.dim() == 4
    y = F.interpolate(x if batched else x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    y = y if batched else y[0]
    if not native:
        y = y.round_().clamp_(0, 255).to(img.dtype)
    return y


def to_image(src: object, min_side: int | None = None) -> torch.Tensor:
    """A (3, H, W) uint8 tensor from a path, a uint8 tensor ((H, W), (1|3, H, W)), an array (H, W[, 3]) or PIL.

    ``min_side``: the smallest side the caller will rescale to; a large JPEG file may be decoded at a reduced
    size that is still at least that (:func:`load_image`).
    """
    if isinstance(src, (str, os.PathLike)):
        return load_image(src, min_side=min_side)
    if hasattr(src, "convert") and hasattr(src, "size"):  # a PIL image
        src = np.asarray(src.convert("RGB"))
    if isinstance(src, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(src))
        src = a[None] if a.dim() == 2 else a.permute(2, 0, 1)
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"cannot read an image from {type(src).__name__}")
    if src.dtype != torch.uint8:
        raise TypeError(f"image tensors must be uint8 (pixels 0..255), got {src.dtype}")
    if src.dim() == 2:
        src = src[None]
    if src.dim() != 3 or src.shape[0] not in (1, 3):
        raise ValueError(f"an image tensor must be (3, H, W) or (H, W), got shape {tuple(src.shape)}")
    return src.expand(3, -1, -1).contiguous() if src.shape[0] == 1 else src
