"""The training loop: batch plan, plateau schedule, accumulation and DDP equivalence, exact resume, bad steps."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _tiny_runs import options, weights

import vggnet
from vggnet.config import resolve
from vggnet.training import BatchPlan, NonFiniteLoss, Plateau, latest_checkpoint, load_checkpoint, train


def small(folder, tmp_path, **kw):
    return resolve(options(folder, tmp_path / "run", **{"dropout": 0.0, **kw}))


def test_batch_plan_shares_and_accumulation():
    one = list(BatchPlan(20, 8, world=1, rank=0, accum=1, seed=3))
    assert len(one) == 2 and all(len(b) == 8 for b in one)
    ranks = [list(BatchPlan(20, 8, world=2, rank=r, accum=2, seed=3)) for r in range(2)]
    for step in range(2):
        merged = sum((ranks[r][2 * step + a] for r in range(2) for a in range(2)), [])
        assert merged == one[step]
    plan = BatchPlan(20, 8, world=1, rank=0, accum=1, seed=3)
    plan.set_epoch(0, start_step=1)
    assert list(plan) == one[1:]
    plan.set_epoch(1)
    assert list(plan) != one
    with pytest.raises(ValueError, match="divisible"):
        BatchPlan(20, 8, world=3, rank=0, accum=1, seed=0)


def test_plateau_schedule():
    p = Plateau(lr=0.01, patience=1, threshold=0.001, max_decays=2, rule="best")
    for err in [0.5, 0.4, 0.4, 0.4]:
        p.step(err)
    assert p.lr == pytest.approx(0.001) and p.decays == 1
    for err in [0.3, 0.3, 0.3]:
        p.step(err)
    assert p.lr == pytest.approx(0.0001) and not p.done
    p.step(0.3)
    p.step(0.3)
    assert p.done


def test_train_writes_a_complete_run(folder, tmp_path):
    run = train(small(folder, tmp_path))
    for name in ["config.toml", "model.safetensors", "stats.json", "classes.json", "metrics.jsonl"]:
        assert (run / name).is_file(), name
    assert (run / "plots" / "learning_curves.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"train_loss", "val_top1_err", "val_top5_err", "lr"} <= set(epochs[0])
    assert any(r["kind"] == "step" and "images_per_s" in r for r in rows)
    loaded = vggnet.load_run(run)
    assert loaded.classes == ["class0", "class1"]
    assert loaded.model.num_classes == 2
    assert len(list((run / "checkpoints").glob("ckpt-*.pt"))) <= 2
    # the same command again finds the finished run and has nothing left to do; another net is refused
    before = weights(run)
    assert train(small(folder, tmp_path)) == run
    assert all(torch.equal(before[k], weights(run)[k]) for k in before)
    with pytest.raises(ValueError, match=r"arch \('A' -> 'B'\).*another --out"):
        train(small(folder, tmp_path, arch="B"))


def test_the_logged_validation_error_is_what_vgg_eval_measures(folder, tmp_path):
    """One net through two code paths: the last epoch's logged validation error (training's loader, its
    statistics and convention) equals the centre-crop error that evaluation gives the run's kept weights on the
    same images at the same Q (37 for a 32 crop: an odd spare range; the pixels themselves are compared in
    test_data's test_one_centre_crop_for_validation_localisation_and_the_protocols)."""
    run = train(small(folder, tmp_path, scale_min=32, scale_max=42, val_fraction=0.5, epochs=1))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["kind"] == "epoch"][-1]
    res = vggnet.evaluate(run, protocols="center", scales=[37], device="cpu")
    assert res.n == logged["val_images"] and res.get("center").top1_err == pytest.approx(logged["val_top1_err"])


def test_accumulated_batch_equals_full_batch(folder, tmp_path):
    full = train(small(folder, tmp_path / "a", epochs=1))
    accum = train(small(folder, tmp_path / "b", epochs=1, accum_steps=4))
    a, b = weights(full), weights(accum)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_resume_mid_epoch_is_bit_exact(folder, tmp_path):
    cfg = dict(epochs=2, dropout=0.5, checkpoint_every=1, keep_checkpoints=3)
    straight = train(small(folder, tmp_path / "straight", **cfg))
    # the interrupted run stops after 3 of the 8 steps (4 steps an epoch), then resumes
    broken = train(small(folder, tmp_path / "broken", max_steps=3, **cfg))
    ckpt = load_checkpoint(latest_checkpoint(broken))
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 3)
    train({"max_steps": 0}, resume=broken)
    a, b = weights(straight), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((broken / "checkpoints").glob("ckpt-*.pt"))) == 3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path):
    run = train(small(folder, tmp_path, epochs=1))
    good = latest_checkpoint(run)
    with pytest.raises(NonFiniteLoss, match="non-finite loss.*last good checkpoint"):
        train({"lr": 1e30, "epochs": 2}, resume=run)
    assert latest_checkpoint(run) == good
    assert torch.isfinite(load_checkpoint(good)["model"]["features.0.weight"]).all()


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(folder, tmp_path, monkeypatch):
    run = train(small(folder, tmp_path, epochs=1))
    good = latest_checkpoint(run)
    before = set(os.listdir(run / "checkpoints"))

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        train({"epochs": 2}, resume=run)
    monkeypatch.undo()
    assert set(os.listdir(run / "checkpoints")) == before  # no half-written file left, none replaced
    assert latest_checkpoint(run) == good
    load_checkpoint(good)  # still loadable


def _ddp_worker(rank, world, port, cfg):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(folder, tmp_path):
    """2 processes x 4 images (gloo) make the same updates as 1 process x 8 images; each process also
    accumulates its 4 images as 2 micro-batches of 2, which must not change the update either."""
    one = train(small(folder, tmp_path / "one", epochs=1, max_steps=3))
    cfg = small(folder, tmp_path / "two", epochs=1, max_steps=3, accum_steps=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg), nprocs=2, join=True)
    a = load_checkpoint(latest_checkpoint(one))["model"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "two" / "run"))["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_demo_recipe_file_is_the_mnist_preset():
    """recipes/demo.toml documents what `vgg train` does with no arguments: the two must not drift apart."""
    from pathlib import Path

    from vggnet.config import PRESETS, read_recipe

    recipe = read_recipe(Path(__file__).parents[1] / "recipes" / "demo.toml")
    assert recipe == dict(PRESETS["mnist"], data="mnist")
    assert resolve({}) == resolve({}, recipe=Path(__file__).parents[1] / "recipes" / "demo.toml")


def test_config_toml_round_trips_awkward_values():
    import math
    import tomllib

    from vggnet.config import TrainConfig, from_dict, toml_text

    cfg = TrainConfig(
        out='runs/a "quoted" \\ path\té\n',
        data="/data/ImageNet 2012",
        lr=1e-5,
        lr_threshold=math.inf,
        flip=False,
        width=1 / 3,
    )
    back = from_dict(tomllib.loads(toml_text(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(TypeError, match="config key x"):
        toml_text({"x": [1, 2]})
