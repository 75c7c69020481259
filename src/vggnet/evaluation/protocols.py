"""The names of the paper's test protocols and the test scales each net is evaluated at.

A protocol averages the posteriors of one or two kinds of views (``PROTOCOLS``); ``resolve_scales`` gives a
net's test scales Q under a protocol: the paper's defaults (``vggnet.scales``, the one rule) or the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence

from .nets import Net

# Protocol name -> the kinds of views whose posteriors it averages.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "dense": ("dense",),
    "multicrop": ("multicrop",),
    "dense+multicrop": ("dense", "multicrop"),
    "center": ("center",),
}
_PROTOCOL_ALIASES = {
    "multi-crop": "multicrop",
    "multicrop+dense": "dense+multicrop",
    "centre": "center",
    "dense+multi-crop": "dense+multicrop",
    "multi-crop+dense": "dense+multicrop",
}


def parse_protocols(protocols: str | Sequence[str]) -> list[str]:
    """Protocol names from a list or a comma-separated string ("dense,multicrop,dense+multicrop")."""
    names = protocols.split(",") if isinstance(protocols, str) else list(protocols)
    out = []
    for raw in names:
        name = raw.strip().lower()
        name = _PROTOCOL_ALIASES.get(name, name)
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {raw!r}; choose from {', '.join(PROTOCOLS)} (comma-separated)")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no protocol given")
    return out


def parse_scales(text: str | None) -> str | list[int] | None:
    """``--scales``: None or "multi" (the paper's default), "single", or comma-separated integers."""
    if text is None or text.strip().lower() in ("", "multi", "default"):
        return None
    if text.strip().lower() == "single":
        return "single"
    try:
        return [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise ValueError(f"--scales takes comma-separated integers, 'multi' or 'single', got {text!r}") from None


def resolve_scales(net: Net, protocol: str, scales: str | int | Sequence[int] | None = None) -> list[int]:
    """The test scales of one net under one protocol.

    ``scales``: None (the paper's multi-scale default; single scale for ``center``, the one-view baseline),
    "multi", "single", an int, or a list of ints. Explicit scales must be >= the net's crop size.
    """
    if scales is None:
        return net.default_scales(multi=protocol != "center")
    if isinstance(scales, str):
        if scales not in ("multi", "single"):
            raise ValueError(f"scales must be 'multi', 'single' or integers, got {scales!r}")
        return net.default_scales(multi=scales == "multi")
    qs = sorted({int(q) for q in ([scales] if isinstance(scales, int) else scales)})
    if not qs:
        raise ValueError("no test scale given")
    if qs[0] < net.crop_size:
        raise ValueError(
            f"test scale Q = {qs[0]} is below {net.name}'s crop size {net.crop_size}: dense evaluation and crops "
            f"need the rescaled image's smaller side >= the crop size; use Q >= {net.crop_size}"
        )
    return qs


def plan_scales(nets: Sequence[Net], protocols: Sequence[str], scales: object) -> list[dict[str, list[int]]]:
    """Per net, protocol -> its test scales Q."""
    return [{p: resolve_scales(n, p, scales) for p in protocols} for n in nets]  # type: ignore[arg-type]


def max_scale(plans: Sequence[dict[str, list[int]]]) -> int:
    """The largest Q any view needs: a JPEG may be decoded at a reduced size down to it (load_image's min_side)."""
    return max(q for plan in plans for qs in plan.values() for q in qs)


__all__ = ["PROTOCOLS", "max_scale", "parse_protocols", "parse_scales", "plan_scales", "resolve_scales"]
