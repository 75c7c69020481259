"""FC1 of dense evaluation computed four ways on pool5 maps of four sizes (issue 26; docs/performance.md).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/dense_fc1.py 512 4096   # net D's FC1 (channels, outputs)
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/dense_fc1.py 64 256     # 1/8 width

today: conv2d on the Linear weight viewed as a conv weight (oneDNN converts it to the channels-last input's
layout on each call); cl_weight: conv2d on a channels-last copy of the weight; unfold_addmm: F.unfold + addmm
with the stored weight; strided_addmm: the windows as a strided view, one reshape copy, addmm (what
``VGG.dense_head`` does, there without the contiguous() copy first). Prints each one's largest difference from
today's and its best-of-3 seconds.
"""

import sys
import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
C, p, OUT = int(sys.argv[1]), 7, int(sys.argv[2])
W = torch.randn(OUT, C * p * p) * 0.01
b = torch.zeros(OUT)


def today(f):
    return F.conv2d(f, W.view(OUT, C, p, p), b)


Wcl = W.view(OUT, C, p, p).contiguous(memory_format=torch.channels_last)


def cl(f):
    return F.conv2d(f, Wcl, b)


def unfold(f):
    n, _, h, w = f.shape
    cols = F.unfold(f, p).transpose(1, 2).reshape(-1, C * p * p)
    y = torch.addmm(b, cols, W.t())
    return y.view(n, h - p + 1, w - p + 1, OUT).permute(0, 3, 1, 2)


def strided(f):  # windows of a contiguous NCHW map as a view, then one copy into (N*L, C*p*p)
    f = f.contiguous()
    n, _, h, w = f.shape
    win = f.unfold(2, p, 1).unfold(3, p, 1)  # n, C, h', w', p, p
    cols = win.permute(0, 2, 3, 1, 4, 5).reshape(-1, C * p * p)
    return torch.addmm(b, cols, W.t()).view(n, h - p + 1, w - p + 1, OUT).permute(0, 3, 1, 2)


sizes = [(12, 16), (8, 11), (16, 22), (7, 7)]
fs = [torch.randn(2, C, h, w).contiguous(memory_format=torch.channels_last) for h, w in sizes]
fns = dict(today=today, cl_weight=cl, unfold_addmm=unfold, strided_addmm=strided)
ref = [today(f) for f in fs]
for name, fn in fns.items():
    err = max((fn(f) - r).abs().max().item() for f, r in zip(fs, ref))
    print(name, "maxdiff", err)
times = {k: [] for k in fns}
for _ in range(3):
    for name, fn in fns.items():
        t = time.perf_counter()
        for f in fs:
            fn(f)
        times[name].append(time.perf_counter() - t)
for k, v in times.items():
    print(f"{k:15s} {min(v):.3f}s  ratio vs today {min(times['today']) / min(v):.2f}x")
