"""vggnet against torchvision and timm on the same machine, the same weights and the same inputs (issue 26).

One run prints one table: for each protocol (centre crops, dense at Q = 384, multi-crop) and precision (float32,
bf16 autocast), the median seconds of each library and vggnet's speed-up over each (their time / ours, the
median of the per-round ratios, with their range). Contenders are interleaved inside every round, in an order
that rotates, so that a machine's slow moment falls on all of them. All run channels-last under
``torch.inference_mode``. Then ``vgg predict`` on one JPEG with a full-width D (the whole command in a fresh
process: imports, building the net, loading the weights, dense evaluation at its default scales with flips).

    PYTHONPATH=src python benchmarks/peers.py                 # the full table (net D, minutes on 2 cores)
    PYTHONPATH=src python benchmarks/peers.py --quick         # a smoke run: 1 round, batch 1, no predict

- crops: a batch of ``--batch`` 224x224 crops, ``model(x)`` of each library.
- dense: one 384x512 image (Q x about 4Q/3, a multiple of 32: timm's pools round down, ours up) and its flip
  through the fully convolutional net: ``model.dense`` + spatial average
  (vggnet) and timm's VGG, whose ConvMlp pre-logits run FC1/FC2 as convolutions before its average-pool head
  (the same function: checked equal, printed as "max abs dp"). torchvision's VGG has no dense mode (n/a).
- multicrop: the 50 crops of one image (5x5 grid and its flip) as one batch, ``model(x)``.

The weights are one random net D (Kaiming init) in each library's layout; timings do not depend on their values.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vggnet
from vggnet.report import markdown_table, provenance
from vggnet.weights import to_timm

CL = torch.channels_last


def contenders(quick: bool) -> dict[str, torch.nn.Module]:
    import timm
    import torchvision

    ours = vggnet.create_model("D", init="kaiming", seed=0).eval()
    tv = torchvision.models.vgg16(weights=None).eval()
    tv.load_state_dict(ours.state_dict())
    tm = timm.create_model("vgg16", pretrained=False).eval()
    tm.load_state_dict(to_timm(ours))
    return {name: m.to(memory_format=CL) for name, m in (("vggnet", ours), ("torchvision", tv), ("timm", tm))}


def workloads(nets: dict[str, torch.nn.Module], batch: int, q: int) -> dict[str, dict]:
    """protocol -> (input, {library: function of the input returning class scores})."""
    g = torch.Generator().manual_seed(0)
    crops = torch.randn(batch, 3, 224, 224, generator=g).contiguous(memory_format=CL)
    image = torch.randn(1, 3, q, 32 * round(q * 4 / 3 / 32), generator=g)  # 4:3, a multiple of 32 (timm floors)
    dense_in = torch.cat([image, image.flip(-1)]).contiguous(memory_format=CL)
    grid = vggnet.evaluation.grid_crops(image[0], 224)
    multi = torch.cat([grid, vggnet.evaluation.grid_crops(image[0].flip(-1), 224)]).contiguous(memory_format=CL)
    ours, tv, tm = nets["vggnet"], nets["torchvision"], nets["timm"]
    return {
        "crops": (crops, {"vggnet": ours, "torchvision": tv, "timm": tm}),
        f"dense Q={q}": (dense_in, {"vggnet": lambda x: vggnet.spatial_average(ours.dense(x)), "timm": tm}),
        "multicrop": (multi, {"vggnet": ours, "torchvision": tv, "timm": tm}),
    }


def check_dense_equal(nets: dict[str, torch.nn.Module], x: torch.Tensor) -> float:
    """Largest posterior difference between our dense evaluation and timm's ConvMlp head (float32)."""
    with torch.inference_mode():
        ours = vggnet.spatial_average(nets["vggnet"].dense(x)).softmax(-1)
        theirs = nets["timm"](x).softmax(-1)
    return (ours - theirs).abs().max().item()


def timed(fn, x: torch.Tensor, bf16: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        t0 = time.perf_counter()
        fn(x).float()
        return time.perf_counter() - t0


def bench(nets, work, rounds: int, precisions: list[str]) -> list[list[str]]:
    rows = []
    for name, (x, fns) in work.items():
        for prec in precisions:
            bf16 = prec == "bf16"
            libs = list(fns)
            for lib in libs:  # warm-up: oneDNN primitives, allocator
                timed(fns[lib], x, bf16)
            secs = {lib: [] for lib in libs}
            for r in range(rounds):
                order = libs[r % len(libs) :] + libs[: r % len(libs)]
                for lib in order:
                    secs[lib].append(timed(fns[lib], x, bf16))
            ours = secs["vggnet"]
            for lib in ("vggnet", "torchvision", "timm"):
                if lib not in secs:
                    rows.append([name, prec, lib, "n/a", ""])
                    continue
                ratios = [t / o for t, o in zip(secs[lib], ours)]
                text = (
                    ""
                    if lib == "vggnet"
                    else (f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
                )
                rows.append([name, prec, lib, f"{statistics.median(secs[lib]):.3f}", text])
    return rows


def predict_latency(rounds: int, amp: list[bool]) -> list[list[str]]:
    """Wall seconds of `vgg predict --weights D.safetensors IMAGE` in a fresh process (all of it)."""
    import matplotlib.cbook
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, image = Path(tmp) / "D.safetensors", Path(tmp) / "photo.jpg"
        m = vggnet.create_model("D", init="kaiming", seed=0)
        m.pretrained_cfg = vggnet.pretrained.normalization_cfg("imagenet")[0]
        vggnet.save_weights(m, weights)
        del m
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            Image.open(f).convert("RGB").resize((500, 375)).save(image, quality=90)
        for a in amp:
            cmd = [sys.executable, "-m", "vggnet", "predict", "--weights", str(weights), str(image), "--device", "cpu"]
            cmd += [] if a else ["--no-amp"]
            secs = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                secs.append(time.perf_counter() - t0)
            rows.append(
                [
                    "vgg predict, 1 JPEG 500x375, D, dense 3 scales + flips",
                    "bf16 (default here)" if a else "float32 (--no-amp)",
                    f"{statistics.median(secs):.2f}",
                    f"{min(secs):.2f}-{max(secs):.2f}",
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    p.add_argument("--batch", type=int, default=16, help="crops per batch for the crop rows (default 16)")
    p.add_argument("--q", type=int, default=384, help="test scale of the dense row (default 384)")
    p.add_argument("--precision", default="float32,bf16", help="float32, bf16 or both (default both)")
    p.add_argument("--no-predict", action="store_true", help="skip the `vgg predict` latency rows")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, batch 1, Q 224, no predict rows")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.batch, args.q, args.no_predict = 1, 1, 224, True
    info = provenance(torch.device("cpu"))
    print(
        f"vggnet vs torchvision vs timm on {info['cpu']} ({info['threads']} threads), torch {info['torch']}, "
        f"torchvision {info['torchvision']}, {args.rounds} rounds interleaved after a warm-up"
    )
    nets = contenders(args.quick)
    work = workloads(nets, args.batch, args.q)
    dense_x = work[f"dense Q={args.q}"][0]
    print(
        f"dense: vggnet and timm's ConvMlp head agree to max abs dp = {check_dense_equal(nets, dense_x):.1e} "
        f"(float32)\n"
    )
    rows = bench(nets, work, args.rounds, args.precision.split(","))
    print(markdown_table(["protocol", "precision", "library", "median s", "vggnet's speed-up (range)"], rows, "lllrr"))
    if not args.no_predict:
        del nets, work
        print()
        rows = predict_latency(max(1, min(args.rounds, 3)), [True, False])
        print(markdown_table(["command", "precision", "median s", "range"], rows, "llrr"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
