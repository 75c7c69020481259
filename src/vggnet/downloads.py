"""Downloads of weights files through torch.hub's client, into torch.hub's cache: nothing is fetched unless a
user asks for weights by name or URL (``pretrained=``, ``--weights``, ``--init-from``), and never when offline."""

from __future__ import annotations

import os
import re
import sys
import urllib.error
from pathlib import Path

import torch


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit: the message is one line naming the file or URL and the fix."""


def offline() -> bool:
    """Whether downloads are off (VGGNET_OFFLINE or HF_HUB_OFFLINE set): only files already cached are used."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("VGGNET_OFFLINE", "HF_HUB_OFFLINE"))


def hub_dir() -> Path:
    """torch.hub's cache of checkpoints ($TORCH_HOME/hub/checkpoints), where downloaded weights are kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: the sha256 prefix in the file name


def download(url: str, dest: Path) -> Path:
    """torch.hub's download into ``dest``: written to a temporary file and renamed, hash-checked if the name has one."""
    if dest.is_file():
        return dest
    if offline():
        raise WeightsError(f"offline and {dest} is not there; download {url} and place it at {dest}")
    m = _HASH.search(os.path.basename(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), m.group(1) if m else None, progress=sys.stderr.isatty())
    except RuntimeError as e:
        if "hash" in str(e):
            raise WeightsError(
                f"{url}: the download does not match the sha256 prefix {m.group(1) if m else ''} in its "
                f"name, so it was not kept; retry, or place a good copy at {dest}"
            ) from None
        raise WeightsError(f"cannot download {url} ({e}); place the file at {dest}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(
            f"cannot download {url} ({reason}); download it elsewhere and place it at {dest}, or pass its local path"
        ) from None
    return dest


__all__ = ["WeightsError", "download", "hub_dir", "offline"]
