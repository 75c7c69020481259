"""A run folder nothing can corrupt (issue 25): outputs that never clobber, one writer at a time, a run's files
checked against each other, exact resume bookkeeping. docs/guarantees.md lists each guarantee and its test."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_runs import epoch_rows, same, weights
from _tiny_runs import options as _options
from _tiny_runs import small as _small

from vggnet.cli import main
from vggnet.config import read_recipe, read_toml, resolve, toml_text
from vggnet.export import export
from vggnet.factory import create_model
from vggnet.files import RunInUse, RunLock, atomic_write_text, check_output, holder, overlapping
from vggnet.runs import load_run
from vggnet.training import latest_checkpoint, train
from vggnet.weights import read_state_dict

SRC = str(Path(__file__).parents[1] / "src")


def options(folder, out, **kw):
    return _options(folder, out, **{"epochs": 1, **kw})


def small(folder, out, **kw):
    return _small(folder, out, **{"epochs": 1, **kw})


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
    """A finished one-epoch run (4 steps); tests copy it before changing it."""
    return train(small(folder, tmp_path_factory.mktemp("finished") / "run"))


def copy_of(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "copy"))


# --- 1. outputs never clobber ------------------------------------------------------------------------------------


def test_atomic_write_refuses_a_fifo_and_a_folder_and_keeps_a_symlink(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="folder"):
        atomic_write_text(tmp_path / "dir", "x")
    target = tmp_path / "target.txt"
    target.write_text("old")
    (tmp_path / "link").symlink_to(target)
    atomic_write_text(tmp_path / "link", "new")
    assert (tmp_path / "link").is_symlink() and target.read_text() == "new"
    atomic_write_text(tmp_path / "fresh.txt", "x")  # a new file: 0666 less the umask, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "fresh.txt").st_mode) == 0o666 & ~umask


def test_check_output_rules(tmp_path):
    (tmp_path / "in.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="reads"):
        check_output(tmp_path / "in.bin", force=True, reads=[tmp_path / "in.bin"])
    with pytest.raises(FileExistsError, match="--force"):
        check_output(tmp_path / "in.bin")
    assert check_output(tmp_path / "in.bin", force=True) == tmp_path / "in.bin"
    assert check_output(tmp_path / "new.bin") == tmp_path / "new.bin"
    with pytest.raises(ValueError, match="character device"):
        check_output("/dev/null", force=True)


def test_export_never_clobbers(finished, tmp_path, capsys):
    before = weights(finished)
    for out, why in (
        (finished / "model.safetensors", "the file this command reads"),
        (finished / "config.toml", "only `vgg train` writes"),
    ):
        assert main(["export", str(finished), "--format", "safetensors", "--out", str(out), "--force"]) == 2
        assert why in capsys.readouterr().err
    assert same(weights(finished), before)
    os.mkfifo(tmp_path / "fifo")
    assert main(["export", str(finished), "--format", "safetensors", "--out", str(tmp_path / "fifo")]) == 2
    assert "FIFO" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"precious")
    assert main(["export", str(finished), "--format", "safetensors", "--out", str(other)]) == 2
    assert "--force" in capsys.readouterr().err and other.read_bytes() == b"precious"
    assert main(["export", str(finished), "--format", "safetensors", "--out", str(other), "--force"]) == 0
    assert same(read_state_dict(other)[0], before)
    copy = tmp_path / "w.safetensors"
    shutil.copy(finished / "model.safetensors", copy)
    assert main(["export", "--weights", str(copy), "--format", "safetensors", "--out", str(copy), "--force"]) == 2
    assert "reads" in capsys.readouterr().err


def test_torchvision_export_refuses_a_config_torchvision_lacks(tmp_path):
    model = create_model("B-5x5", num_classes=3, width=1 / 16, fc_width=16, crop_size=32)
    with pytest.raises(ValueError, match="no VGG of config B-5x5"):
        export(model, tmp_path / "b5.pth", format="torchvision")
    assert not (tmp_path / "b5.pth").exists()


def test_out_may_not_be_inside_or_contain_the_data(folder, tmp_path):
    assert overlapping(folder, folder) == "is" and overlapping(folder / "x", folder) == "lies inside"
    assert overlapping(folder.parent, folder) == "contains" and overlapping(tmp_path, folder) is None
    names = sorted(os.listdir(folder))
    for out, how in ((folder, "is the --data"), (folder / "run", "lies inside the --data")):
        with pytest.raises(ValueError, match=how):
            train(small(folder, out))
    assert sorted(os.listdir(folder)) == names  # nothing written into the data


# --- 2. a trained run is never retrained by accident; a failed start leaves a folder as it found it ------------


def test_finished_run_without_checkpoints_keeps_its_weights(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")  # a normal way to free disk
    before = weights(run)
    assert train({}, resume=run) == run  # finished: nothing to train, said so
    assert "nothing to train" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"holds trained weights \(1 epoch\(s\)\).*--init-from"):
        train({"epochs": 4}, resume=run)
    with pytest.raises(ValueError, match="holds trained weights"):  # the original command with more epochs
        train(small(_data_of(finished), run, epochs=4))
    assert same(weights(run), before) and len(epoch_rows(run)) == 1


def _data_of(run):
    return read_toml(Path(run) / "config.toml")["data"]


def test_failed_start_leaves_a_precreated_out_as_it_was(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "slurm-1.log").write_text("job log")  # what a batch script made before calling vgg train
    with pytest.raises(FileNotFoundError):
        train(options(folder, out, data=str(tmp_path / "typo")))
    assert os.listdir(out) == ["slurm-1.log"]
    run = train(small(folder, out, max_steps=1))  # the corrected command is not refused
    assert latest_checkpoint(run) is not None and (out / "slurm-1.log").read_text() == "job log"


# --- 3. one writer per run folder ----------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(finished, tmp_path, folder):
    run = copy_of(finished, tmp_path)
    with RunLock(run, "vgg train (test)"):
        assert holder(run) == f"process {os.getpid()} (vgg train (test))"
        with pytest.raises(RunInUse, match=f"being written by process {os.getpid()}"):
            train({"epochs": 2}, resume=run)
        with pytest.raises(RunInUse, match="one writer per run folder"):
            train(small(folder, run))
        load_run(run)  # readers are not writers
    assert holder(run) is None
    assert (run / "model.safetensors").is_file() and len(epoch_rows(run)) == 1  # the refusals changed nothing


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    code = (
        f"import sys, time; sys.path.insert(0, {SRC!r}); from vggnet.files import RunLock; "
        f"lock = RunLock({str(run)!r}); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=f"process {child.pid}"):
            RunLock(run)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    RunLock(run).release()  # the kernel dropped the dead process's lock


# --- 5. files checked against each other ---------------------------------------------------------------------------


def test_classes_json_is_checked_against_the_weights(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    classes = json.loads((run / "classes.json").read_text())
    (run / "classes.json").write_text(json.dumps(classes[::-1]))
    with pytest.raises(ValueError, match=r"classes.json disagrees with the class order.*write \[\"class0\""):
        load_run(run)
    (run / "classes.json").write_text(json.dumps(classes[:1]))
    with pytest.raises(ValueError, match="lists 1 classes but .*model.safetensors has 2 outputs"):
        load_run(run)
    (run / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes.json is missing; .*records its 2 classes"):
        load_run(run)
    (run / "classes.json").write_text(json.dumps(classes))
    assert load_run(run).classes == classes


def test_config_and_stats_are_checked(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    toml = (run / "config.toml").read_text()
    (run / "config.toml").write_text(toml.replace('arch = "A"', 'arch = "D"'))
    with pytest.raises(ValueError, match=r"config.toml says arch 'D' but .*holds net A"):
        load_run(run)
    (run / "config.toml").write_text(toml)
    stats = json.loads((run / "stats.json").read_text())
    (run / "stats.json").write_text(json.dumps(dict(stats, mean=[float("nan")] * 3)))
    with pytest.raises(ValueError, match="stats.json holds a mean .* not finite"):
        load_run(run)
    assert main(["predict", str(run), str(next(Path(_data_of(run)).rglob("*.png")))]) == 2
    assert "stats.json" in capsys.readouterr().err
    (run / "stats.json").write_text(json.dumps(dict(stats, mean=[0.1, 0.2, 0.3])))
    with pytest.raises(ValueError, match="differs from the .* was trained with"):
        load_run(run)


# --- 6. resume bookkeeping -----------------------------------------------------------------------------------------


def test_mid_epoch_checkpoint_carries_the_epoch_loss(folder, tmp_path):
    straight = train(small(folder, tmp_path / "straight", checkpoint_every=2))
    cfg = small(folder, tmp_path / "run", checkpoint_every=2, max_steps=3)
    train(cfg)
    newest = latest_checkpoint(Path(cfg.out))
    assert newest.name == "ckpt-000000003.pt"
    newest.unlink()  # resume from the --checkpoint-every checkpoint of step 2
    ckpt = torch.load(latest_checkpoint(Path(cfg.out)), weights_only=True)
    assert ckpt["epoch_loss"][1] == 2 and ckpt["epoch_loss"][0] > 0
    train({}, resume=cfg.out)  # from step 2 to the --max-steps 3 still in force
    assert latest_checkpoint(Path(cfg.out)).name == "ckpt-000000003.pt" and not epoch_rows(cfg.out)
    train({}, resume=cfg.out)  # --max-steps 3 was reached: the suggested command continues without it
    assert same(weights(straight), weights(cfg.out))
    assert epoch_rows(cfg.out)[0]["train_loss"] == pytest.approx(epoch_rows(straight)[0]["train_loss"], rel=1e-6)


# --- 7. messages ---------------------------------------------------------------------------------------------------


def test_config_values_and_files(tmp_path, finished):
    for flag, value in (("momentum", 5.0), ("dropout", 1.0), ("weight_decay", -1.0)):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be"):
            resolve({flag: value})
    recipe = tmp_path / "r.toml"
    recipe.write_text("[a]\nlr = 0.01\n[b]\nlr = 0.9\n")
    with pytest.raises(ValueError, match=r"lr is set in \[a\] and in \[b\]"):
        read_recipe(recipe)
    recipe.write_bytes("\ufeff[a]\nlr = 0.01\n".encode())  # a BOM, as some editors write
    assert read_recipe(recipe) == {"lr": 0.01}
    run = copy_of(finished, tmp_path)
    (run / "config.toml").write_text((run / "config.toml").read_text() + "lrr = 0.1\n")
    with pytest.raises(ValueError, match=r"config.toml: unknown key\(s\) \['lrr'\]"):
        train({}, resume=run)
    surrogate = "runs/caf\udcc3\udca9"  # "café" decoded under LC_ALL=C
    assert read_toml_text(toml_text({"out": surrogate}), tmp_path)["out"] == "runs/café"


def read_toml_text(text, tmp_path):
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    return read_toml(tmp_path / "c.toml")


# --- 4. bounded memory ---------------------------------------------------------------------------------------------


def test_workers_are_capped_by_cores_and_memory(monkeypatch, capsys):
    from vggnet import resources
    from vggnet.runtime import Dist
    from vggnet.training.loaders import loader_workers

    monkeypatch.setattr(resources, "usable_cores", lambda: 2)
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 100 * 2**30)
    cfg = resolve({"workers": 1000})
    assert loader_workers(cfg, Dist(0, 1, 0)) == 4
    assert "--workers 1000: using 4 (2 usable cores" in capsys.readouterr().out
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 2**30)  # 1 GiB: two workers
    assert loader_workers(resolve({"workers": 999}), Dist(0, 1, 0)) == 2
    assert loader_workers(resolve({"workers": 1}), Dist(0, 1, 0)) == 1


@pytest.mark.slow
def test_a_loader_worker_dies_with_its_parent(tmp_path):
    code = (
        f"import os, sys, time; sys.path.insert(0, {SRC!r}); from vggnet.training.loaders import "
        f"ignore_stop_signals\npid = os.fork()\nif pid == 0:\n    ignore_stop_signals(); time.sleep(60); "
        f"os._exit(0)\nprint(pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(worker, signal.SIGTERM)  # ignored, as Ctrl-C is: the main process stops the run
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)  # the OOM killer's way
    parent.wait()
    for _ in range(200):  # the kernel's SIGKILL arrives at once; a bounded wait, no timing asserted
        if not _alive(worker):
            break
        subprocess.run(["sleep", "0.05"])
    assert not _alive(worker)


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state and "\nState:\tX" not in state


def test_evaluation_refuses_or_shrinks_a_batch_that_does_not_fit(finished, monkeypatch, capsys):
    from vggnet import resources

    model = load_run(finished).model
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 2**30)
    with pytest.raises(ValueError, match="--scales 20000: .* GiB"):
        resources.fit_eval_batch([model], [{"dense": [20000]}], 1, "cpu")
    need = resources.fit_eval_batch([model], [{"dense": [256]}], 256, "cpu")
    assert 1 <= need < 256 and "--batch-size 256: using" in capsys.readouterr().err
    assert resources.fit_eval_batch([model], [{"dense": [40]}], 256, "cpu") == 256
    monkeypatch.undo()
    assert main(["eval", str(finished), "--protocol", "dense", "--scales", "20000", "--limit", "2"]) == 2
    assert "--scales 20000" in capsys.readouterr().err
    img = next(p for p in Path(load_run(finished).config["data"]).rglob("*.png"))
    assert main(["predict", str(finished), str(img), "--scales", "20000"]) == 2  # predict's path checks it too
    assert "--scales 20000" in capsys.readouterr().err
    assert main(["eval", str(finished), "--batch-size", "0", "--limit", "2"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_a_non_utf8_metrics_line_is_named(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "step", "note": "\xff"}\n')
    names = sorted(os.listdir(run))
    with pytest.raises(ValueError, match=r"metrics.jsonl line \d+ is not UTF-8"):
        train({"epochs": 2}, resume=run)
    assert sorted(os.listdir(run)) == names
