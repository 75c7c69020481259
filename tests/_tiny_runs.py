"""Tiny training runs for the fault and run-folder tests: the options of a 1/16-width net A on a small folder,
and what the tests read back from a run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vggnet.config import resolve
from vggnet.weights import read_state_dict


def options(folder, out, **kw):
    values = dict(
        arch="A",
        width=1 / 16,
        fc_width=16,
        crop_size=32,
        scale_min=32,
        scale_max=40,
        data=str(folder),
        val_fraction=0.2,
        batch_size=8,
        epochs=2,
        workers=0,
        device="cpu",
        log_every=1,
        tensorboard=False,
        stats_images=16,
        init="kaiming",
        dropout=0.5,
        out=str(out),
        lr=0.01,
    )
    values.update(kw)
    return values


def small(folder, out, **kw):
    return resolve(options(folder, out, **kw))


def weights(run):
    return read_state_dict(Path(run) / "model.safetensors")[0]


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def epoch_rows(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]
