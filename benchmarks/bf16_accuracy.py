"""How far bf16 autocast evaluation is from float32: top-1 agreement and the largest posterior difference per
protocol (issue 26: the measurement behind the CPU's bf16 default, docs/performance.md).

Two nets:

- ``--run RUN``: a trained run folder (e.g. the demo: ``vgg train --epochs 2 --out /tmp/demo``), on its own
  validation data; also the top-1 error under each precision.
- ``--full-d``: a full-width net D (138M parameters) with torchvision-layout weights made here (Kaiming init,
  seed 0, exported with ``export_weights(..., "torchvision")`` and read back through ``load_pretrained``), on
  ``--images`` photos cut from matplotlib's sample photo. Random weights have small margins between classes,
  so their agreement is a pessimistic figure for trained weights.

    PYTHONPATH=src python benchmarks/bf16_accuracy.py --run /tmp/demo --full-d

Each protocol is run twice through ``vggnet.evaluation.evaluate`` (``amp=False`` and ``amp=True``, the CPU),
with the same views; the posteriors are compared image by image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import vggnet
from vggnet.evaluation import evaluate
from vggnet.report import markdown_table, provenance
from vggnet.runtime import cpu_has_native_bf16

PROTOCOLS = ["center", "dense", "multicrop"]


def photos(n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` uint8 images cut from matplotlib's sample photo (crops of several aspects, flips, tints)."""
    import matplotlib.cbook
    import numpy as np
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        base = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
    g = torch.Generator().manual_seed(seed)
    out = []
    h, w = base.shape[-2:]
    for i in range(n):
        ch, cw = (
            int(torch.randint(h // 2, h + 1, (1,), generator=g)),
            int(torch.randint(w // 2, w + 1, (1,), generator=g)),
        )
        top, left = (
            int(torch.randint(0, h - ch + 1, (1,), generator=g)),
            int(torch.randint(0, w - cw + 1, (1,), generator=g)),
        )
        img = base[:, top : top + ch, left : left + cw].float() * (0.7 + 0.6 * torch.rand(3, 1, 1, generator=g))
        out.append((img.flip(-1) if i % 2 else img).clamp(0, 255).to(torch.uint8))
    return out


def compare(net, samples, scales, batch_size: int) -> list[list[str]]:
    """One row per protocol: top-1 agreement, largest and mean |posterior difference|, top-1 errors."""
    rows = []
    for pr in PROTOCOLS:
        res = {
            amp: evaluate(
                net,
                samples,
                protocols=pr,
                scales=scales if pr != "center" else None,
                device="cpu",
                amp=amp,
                return_posteriors=True,
                batch_size=batch_size,
            )
            for amp in (False, True)
        }
        name = res[False].nets[0]
        p32, p16 = res[False].posteriors[(name, pr)], res[True].posteriors[(name, pr)]
        agree = (p32.argmax(1) == p16.argmax(1)).float().mean().item()
        diff = (p32 - p16).abs()
        rows.append(
            [
                name,
                pr,
                str(len(p32)),
                f"{100 * agree:.2f}",
                f"{diff.max().item():.2e}",
                f"{diff.mean().item():.1e}",
                f"{100 * res[False].get(pr).top1_err:.2f}",
                f"{100 * res[True].get(pr).top1_err:.2f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="a trained run folder, evaluated on its validation data")
    p.add_argument("--limit", type=int, default=None, help="at most this many validation images of --run")
    p.add_argument("--full-d", action="store_true", help="also a full-width D with torchvision-layout weights")
    p.add_argument("--images", type=int, default=6, help="photos for --full-d (default 6)")
    p.add_argument("--d-scales", default="256", help="test scales Q of --full-d, comma-separated (default 256)")
    args = p.parse_args(argv)
    info = provenance(torch.device("cpu"))
    print(
        f"bf16 autocast vs float32 on {info['device_name']}, torch {info['torch']}, {info['threads']} threads, "
        f"native bf16: {cpu_has_native_bf16()}"
    )
    rows = []
    if args.run:
        rows += compare(
            vggnet.evaluation.as_net(args.run),
            None
            if args.limit is None
            else vggnet.evaluation.resolve_eval_samples(vggnet.load_run(args.run))[: args.limit],
            None,
            256,
        )
    if args.full_d:
        with tempfile.TemporaryDirectory() as tmp:
            src = vggnet.create_model("D", init="kaiming", seed=0)
            vggnet.export_weights(src, Path(tmp) / "d.pth", "torchvision")
            del src
            net = vggnet.pretrained.load_pretrained(None, Path(tmp) / "d.pth", normalize="imagenet")
        samples = [(img, 0) for img in photos(args.images)]
        rows += compare(
            vggnet.evaluation.as_net(net, name="D (Kaiming init, torchvision layout)"),
            samples,
            [int(q) for q in args.d_scales.split(",")],
            8,
        )
    headers = [
        "net",
        "protocol",
        "images",
        "top-1 agreement %",
        "max abs dp",
        "mean abs dp",
        "top-1 err % fp32",
        "top-1 err % bf16",
    ]
    print(markdown_table(headers, rows, "lllrrrrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
