"""`vgg reproduce`: the staged plans (small, quick, paper), the finding checks, reuse and resume, the report."""

import argparse
import json
import re

import pytest

from vggnet import reproduce as rp
from vggnet.cli.reproduce import add_reproduce_arguments, run_reproduce_cli


def cli(argv):
    parser = argparse.ArgumentParser(prog="vgg reproduce")
    add_reproduce_arguments(parser)
    return run_reproduce_cli(parser.parse_args(argv))


# ---- plans -------------------------------------------------------------------------------------------------


def test_small_plan_follows_the_papers_stages(tmp_path):
    plan = rp.make_plan("small", out=tmp_path)
    assert plan.seeds == [0, 1, 2] and len(plan.runs) == 13 * 3
    by = {r.name: r for r in plan.runs}
    for seed in plan.seeds:
        a = by[f"A-S64-s{seed}"]
        assert a.stage == 1 and a.depends is None and by[f"A-LRN-S64-s{seed}"].depends is None
        for net in ["B", "C", "D", "E", "B-5x5"]:  # deeper nets start from net A of the same seed (section 3.1)
            r = by[f"{net}-S64-s{seed}"]
            assert r.stage == 2 and r.depends == a.name and r.overrides["init_from"] == str(a.folder)
        for net in "CDE":
            fixed, large, jit = by[f"{net}-S64-s{seed}"], by[f"{net}-S96-s{seed}"], by[f"{net}-S64-128-s{seed}"]
            assert (large.stage, large.depends, large.scale) == (3, fixed.name, (96, 96))
            assert (jit.stage, jit.depends, jit.scale) == (4, large.name, (64, 128))
            assert large.config().lr == pytest.approx(fixed.config().lr / 10)  # S=384 from S=256 with lr / 10
            assert jit.config().lr == pytest.approx(large.config().lr)
            assert (fixed.config().lr_decays, large.config().lr_decays) == (2, 1)  # fine-tuning: one decay
    cfg = by["D-S64-s0"].config()
    assert (cfg.data, cfg.width, cfg.crop_size, cfg.flip, cfg.seed) == ("mnist-clutter", 0.0625, 64, False, 0)
    # the design's geometry: block 5's convs (after four pools) work on 4x4 maps at the crop; dense windows at
    # a stride of 32 overlap by half
    assert cfg.crop_size // 16 >= 4 and cfg.crop_size > 32
    assert [e for e in plan.evals if e.runs == ["D-S64-128-s0"]][0].multi == [64, 96, 128]
    assert [e for e in plan.evals if e.runs == ["D-S96-s0"]][0].multi == [87, 96, 105]
    # every run is evaluated; D and E jittered are also evaluated with every protocol and fused, per seed
    assert {e.runs[0] for e in plan.evals if e.kind == "scales"} == set(by)
    pairs = [e for e in plan.evals if e.kind == "protocols"]
    assert [e.runs for e in pairs] == [[f"D-S64-128-s{s}", f"E-S64-128-s{s}"] for s in plan.seeds]
    # stages run in order: a run never comes before the run it starts from
    order = [r.name for r in plan.runs]
    assert all(order.index(r.depends) < order.index(r.name) for r in plan.runs if r.depends)


def test_quick_plan_trains_on_a_subset(tmp_path):
    plan = rp.make_plan("quick", out=tmp_path, seeds=[3])
    assert plan.seeds == [3] and len(plan.runs) == 13
    source, folder, per_class = plan.subset
    assert source == "mnist-clutter" and per_class == (60, 20)
    assert all(r.config().data == folder for r in plan.runs)


def test_paper_dry_run_prints_the_staged_plan(capsys, tmp_path):
    assert cli(["--grid", "paper", "--dry-run", "--data", "/data/imagenet", "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    for stage in (1, 2, 3, 4):
        assert f"Stage {stage}:" in text
    assert "torchrun --nproc-per-node=NGPUS -m vggnet train --recipe" in text
    runs = str(tmp_path / "rep" / "runs")
    # the staged initialisation, rewritten into the output folder: A -> D -> D at 384 -> D jittered
    assert re.search(rf"2-D-S256\.toml --data /data/imagenet --init-from {re.escape(runs)}/1-A-S256-s0 ", text)
    assert re.search(rf"3-D-S384\.toml .*--init-from {re.escape(runs)}/2-D-S256-s0 ", text)
    assert re.search(rf"4-E-S256-512\.toml .*--init-from {re.escape(runs)}/3-E-S384-s0 ", text)
    assert "1-A-LRN-S256-s0: A-LRN, S=256, up to 74 epochs, lr 0.01" in text
    assert "vgg fuse" in text and "4-D-S256-512-s0" in text and "dense,multicrop,dense+multicrop" in text
    assert not (tmp_path / "rep").exists()  # a dry run writes nothing


def test_paper_plan_maps_any_recipe_folder(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "1-a.toml").write_text('arch = "vgg11"\nout = "runs/x/a"\nscale_min = 256\nscale_max = 256\n')
    (recipes / "2-d.toml").write_text(
        'arch = "D"\ninit_from = "runs/x/a"\nout = "runs/x/d"\nscale_min = 256\nscale_max = 512\nlr = 0.001\n'
    )
    plan = rp.make_plan("paper", out=tmp_path / "o", recipes=recipes, seeds=[0, 1], data="/imnet")
    by = {r.name: r for r in plan.runs}
    assert set(by) == {"1-a-s0", "1-a-s1", "2-d-s0", "2-d-s1"}
    d = by["2-d-s1"]
    assert (d.arch, d.label, d.stage, d.depends) == ("D", "256-512", 2, "1-a-s1")
    cfg = d.config()
    assert cfg.init_from == str(tmp_path / "o" / "runs" / "1-a-s1") and cfg.data == "/imnet" and cfg.lr == 0.001
    assert cfg.out == str(tmp_path / "o" / "runs" / "2-d-s1") and cfg.seed == 1
    (recipes / "0-bad.toml").write_text('arch = "B"\ninit_from = "runs/x/d"\nout = "runs/x/b"\n')
    with pytest.raises(ValueError, match="comes later"):
        rp.make_plan("paper", out=tmp_path / "o", recipes=recipes)


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="contradict"):
        cli(["--quick", "--grid", "paper", "--dry-run"])
    with pytest.raises(ValueError, match="seeds"):
        cli(["--seeds", "a,b", "--dry-run"])
    with pytest.raises(FileNotFoundError):
        cli(["--grid", "paper", "--recipes", str(tmp_path / "none"), "--dry-run"])


# ---- checks ------------------------------------------------------------------------------------------------


def cells_with(**values):
    """Table 3 cells with the given per-seed top-1 errors (top-5 = 0)."""
    return {
        "3": {
            k.replace("_", "@").replace("LRN@", "A-LRN@"): {s: [v, 0.0] for s, v in enumerate(vs)}
            for k, vs in values.items()
        }
    }


def test_check_verdicts_follow_the_spread():
    comp = rp.Comparison("B vs A", [("3", "B@256")], [("3", "A@256")])
    assert rp.check(comp, cells_with(B_256=[10, 11, 12], A_256=[13, 14, 15]))["verdict"] == "supported"
    r = rp.check(comp, cells_with(B_256=[10, 14, 12], A_256=[11, 12, 13]))
    assert r["verdict"] == "inconclusive" and "contains 0" in r["reason"] and r["seeds_needed"] == 17
    assert rp.check(comp, cells_with(B_256=[14, 15, 16], A_256=[10, 11, 13]))["verdict"] == "not supported"
    one = rp.check(comp, cells_with(B_256=[10], A_256=[13]))
    assert one["verdict"] == "inconclusive" and "one seed" in one["reason"] and one["diff_std"] is None
    assert rp.check(comp, cells_with(B_256=[10]))["verdict"] == "not measured"
    assert rp.check(comp, cells_with(B_256=[10], A_256=[13]))["paper_diff"] == pytest.approx(28.7 - 29.6)
    # "LRN does not help": supported unless A-LRN is better beyond the spread
    lrn = rp.Comparison("A-LRN vs A", [("3", "A-LRN@256")], [("3", "A@256")], "not_lower")
    assert rp.check(lrn, cells_with(LRN_256=[12, 13, 12], A_256=[12, 12, 13]))["verdict"] == "supported"
    assert rp.check(lrn, cells_with(LRN_256=[9, 10, 11], A_256=[12, 13, 14]))["verdict"] == "not supported"


def test_paired_t_interval_and_the_seeds_that_would_resolve_a_difference():
    from vggnet.reproduce.findings import interval, seeds_to_resolve

    lo, hi = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert (lo, hi) == (pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-3), pytest.approx(2 + 4.3027 / 3**0.5, abs=1e-3))
    assert seeds_to_resolve(1.0, 1.0) == 7  # t(0.975, 6) / sqrt(7) = 0.925 < 1; n = 6 gives 1.05
    assert seeds_to_resolve(0.01, 10.0) is None
    # a one-std gap of 3 seeds is inconclusive by the interval, and the check says how many seeds would do
    comp = rp.Comparison("B vs A", [("3", "B@256")], [("3", "A@256")])
    r = rp.check(comp, cells_with(B_256=[10, 12, 14], A_256=[12, 13, 14]))  # diffs -2, -1, 0
    assert r["verdict"] == "inconclusive" and r["ci95"][0] < 0 < r["ci95"][1]
    assert r["seeds_needed"] == seeds_to_resolve(abs(r["paper_diff"]), 1.0)
    assert f"{r['seeds_needed']} seeds would resolve the paper's difference" in r["reason"]


def test_claim_verdict_combines_comparisons():
    v = lambda *xs: rp.verdict([{"verdict": x} for x in xs])  # noqa: E731
    assert v("supported", "supported") == "supported"
    assert v("supported", "inconclusive") == "partly supported (1 of 2 comparisons)"
    assert v("inconclusive", "inconclusive") == "inconclusive"
    assert v("not supported", "supported") == "partly contradicted"
    assert v("not supported") == "not supported"
    assert v("not measured") == "not measured"


def test_a_run_made_with_another_config_stops_the_plan(tmp_path):
    import tomli_w

    plan = rp.make_plan("small", out=tmp_path)
    spec = plan.runs[0]
    spec.folder.mkdir(parents=True)
    (spec.folder / "config.toml").write_text(tomli_w.dumps(dict(spec.config().to_dict(), epochs=99, device="cuda")))
    with pytest.raises(ValueError, match="epochs: 99 there"):
        rp.check_config(spec)
    (spec.folder / "config.toml").write_text(tomli_w.dumps(dict(spec.config().to_dict(), device="cuda")))
    rp.check_config(spec)  # where a run ran does not change its numbers


# ---- end to end ----------------------------------------------------------------------------------------------


def table(text, title):
    """The rows of the Markdown table under the heading that starts with ``title``."""
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_quick_reproduction_fills_every_table_then_reuses_its_runs(tmp_path):
    out = tmp_path / "rep"
    assert cli(["--quick", "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    number = re.compile(r"^\d+\.\d+( ± \d+\.\d+)?$")
    for title, rows in (("Table 3", 13), ("Table 4", 10), ("Table 5", 6), ("Table 6", 3)):
        body = table(text, title)
        assert len(body) == rows, title
        for row in body:
            paper = row[-2:] if row[0] != "B-5x5" else []  # the paper gives B-5x5 only relative to B
            assert all(number.match(c) for c in row[-4:-2] + paper), (title, row)  # ours top-1/top-5, the paper's
    assert [row[-2] for row in table(text, "Table 3") if row[0] == "B-5x5"] == ["B + 7% (30.7)"]
    findings = table(text, "Findings")
    assert len(findings) == 16 and all(row[-1].split(":")[0] == "inconclusive" for row in findings)  # one seed
    assert "Small filters, deeper, beat large filters, shallower" in text
    assert text.index("## Design") < text.index("## Findings")
    assert "nan" not in text.lower()
    # Appendix A at laptop scale: SCR / PCR x all layers / FC only on a centre crop, then dense at one and three Q
    assert len(table(text, "Table 8")) == 4 and len(table(text, "Table 9")) == 6
    assert (out / "localize" / "localize.json").is_file()
    for name in ("error_vs_depth", "error_vs_test_scale", "learning_curves"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"(plots/{name}.png)" in text
    data = json.loads((out / "results.json").read_text())
    assert len(data["trained"]) == 13 and not data["reused"]
    assert data["tables"]["6"]["dense+multicrop"]["per_seed"]["0"][0] >= 0
    assert data["provenance"]["torch"] and data["command"] == f"vgg reproduce --quick --out {out}"
    # the staged initialisation happened: D's log names the layers it took from net A
    assert "init from net A" in (out / "logs" / "D-S64-s0.log").read_text()
    assert "copied classifier.0, classifier.3, classifier.6" in (out / "logs" / "B-5x5-S64-s0.log").read_text()

    # a second call reuses the finished runs and cached evaluations; an interrupted run is resumed, not redone
    weights = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")}
    (out / "runs" / "E-S64-128-s0" / "reproduce.json").unlink()  # as if stopped after its last checkpoint
    assert cli(["--quick", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["trained"] == ["E-S64-128-s0"] and len(data["reused"]) == 12
    marker = json.loads((out / "runs" / "E-S64-128-s0" / "reproduce.json").read_text())
    assert marker["resumed"] and marker["epochs"] == 1
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")} == weights
    assert len(data["history"]) == 2
    assert "Earlier calls into this folder" in (out / "REPORT.md").read_text()


@pytest.mark.slow
def test_paper_plan_under_torchrun_trains_with_ddp_then_evaluates_on_rank_0(tmp_path):
    """The ImageNet code path on a toy scale: recipes in file order, two processes (gloo), then rank 0 alone."""
    import os
    import socket
    import subprocess
    import sys

    data = rp.make_subset("mnist-scale", tmp_path / "data", (20, 5))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    common = (
        "width = 0.0625\nfc_width = 16\ncrop_size = 32\nscale_min = 32\nscale_max = 32\nepochs = 1\n"
        'batch_size = 20\ninit = "kaiming"\nflip = false\nworkers = 0\nstats_images = 50\ntensorboard = false\n'
    )
    (recipes / "1-A.toml").write_text(common + 'arch = "A"\nout = "runs/t/A"\n')
    (recipes / "2-D.toml").write_text(common + 'arch = "D"\ninit_from = "runs/t/A"\nout = "runs/t/D"\n')
    script = tmp_path / "main.py"
    script.write_text(
        "import argparse, sys\nfrom vggnet.cli import reproduce as rp\nif __name__ == '__main__':\n"
        "    p = argparse.ArgumentParser()\n    rp.add_reproduce_arguments(p)\n"
        "    sys.exit(rp.run_reproduce_cli(p.parse_args(sys.argv[1:])))\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        str(script),
        "--grid",
        "paper",
        "--recipes",
        str(recipes),
        "--data",
        str(data),
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "batch 20 on 2 x cpu" in log  # both processes trained each run together
    assert "init from net A" in log and log.count("reproduce (paper):") == 1  # rank 0 speaks for all
    data_json = json.loads((out / "results.json").read_text())
    assert data_json["trained"] == ["1-A-s0", "2-D-s0"]
    assert set(data_json["evals"]) == {"1-A-s0", "2-D-s0"}
    rows = table((out / "REPORT.md").read_text(), "Table 3")  # scales of other recipes get rows of their own
    assert [(r[0], r[1]) for r in rows] == [("A", "- / S=32"), ("D", "- / S=32")]
    assert all(re.match(r"^\d+\.\d+$", r[3]) for r in rows) and rows[0][-1] == "-"


def test_reproduce_and_eval_share_one_test_scale_rule(tmp_path):
    from vggnet.scales import eval_scales as default_scales

    def scales_for(scale, crop):  # the rule as `vgg eval` applies it: vggnet.scales
        return default_scales(*scale, crop, multi=False)[0], default_scales(*scale, crop)

    assert scales_for((384, 384), 224) == (384, [352, 384, 416])  # the paper's {S-32, S, S+32}
    assert scales_for((256, 512), 224) == (384, [256, 384, 512])
    # every evaluation of the plans is at the test scales `vgg eval` would choose for its run
    data = tmp_path / "subset"
    for split in ("train", "val"):
        (data / split / "c0").mkdir(parents=True)
    for plan in (
        rp.make_plan("small", out=tmp_path / "s", seeds=[0]),
        rp.make_plan("medium", out=tmp_path / "m", data=str(data)),
    ):
        for e in plan.evals:
            run = plan.run(e.runs[0])
            single, multi = scales_for(run.scale, run.config().crop_size)
            assert (e.single, e.multi) == (single, multi if len(e.multi) > 1 else [single]), e.name
            assert rp.eval_scales_of(run) == (single, multi)


def test_medium_dry_run_prints_the_runs_and_an_estimate_of_gpu_hours(capsys, tmp_path):
    from vggnet.reproduce.budget import STATED_IMAGES_PER_S, forward_flops

    data = tmp_path / "imagenette"
    for split, n in (("train", 300), ("val", 1)):
        for c in ("n01440764", "n02102040"):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                (data / split / c / f"{i}.JPEG").write_bytes(b"")  # counted by name, never decoded
    out = tmp_path / "m"
    assert cli(["--grid", "medium", "--data", str(data), "--dry-run", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Plan (medium)" in text and "13 training runs in 4 stages" in text
    assert "B-5x5-S256-s0: B-5x5, S=256, up to 74 epochs, lr 0.01, init from A-S256-s0" in text
    assert "D-S256-512-s0: D, S in [256, 512]" in text
    assert "Estimate: 600 training and 2 validation images, 2 classes, 224 crops; rate stated" in text
    # a run's hours: epochs x images x its training FLOPs (3 forwards) / the stated FLOP rate of net D at 224
    rate = STATED_IMAGES_PER_S * 3 * forward_flops("D", 1000, 224)
    d_train = 3 * forward_flops("D", 2, 224)
    d_hours = 74 * 600 * d_train / rate / 3600
    assert f"  D-S256-s0: D, 74, {d_train / 1e9:.1f}, {rate / d_train:,.0f}, {d_hours:.3g}\n" in text
    assert re.search(r"Total: at most [\d.]+ GPU-hours", text)
    assert not out.exists()  # a dry run writes nothing
    with pytest.raises(ValueError, match="needs --data DIR"):
        cli(["--grid", "medium", "--dry-run"])
    with pytest.raises(ValueError, match="no train/ or val/ in it"):
        cli(["--grid", "medium", "--dry-run", "--data", str(data / "train")])


# ---- the command line: --grid, --seeds N or a list ------------------------------------------------------------


def test_seeds_take_a_count_or_a_list(capsys, tmp_path):
    from vggnet.cli.reproduce import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("1") == [0]  # a count: seeds 0..N-1
    assert parse_seeds("0,3,5") == [0, 3, 5] and parse_seeds("4,") == [4]  # a list: those seeds
    for bad, message in (("0", "at least 1"), ("a", "a count N or comma-separated"), (",", "empty")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)
    assert cli(["--seeds", "2", "--dry-run", "--out", str(tmp_path / "a")]) == 0
    assert "seeds 0, 1; 26 training runs" in capsys.readouterr().out
    assert cli(["--seeds", "0,3,5", "--dry-run", "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "seeds 0, 3, 5; 39 training runs" in text and "A-S64-s5:" in text and "A-S64-s1:" not in text


def test_grid_names_the_grid(capsys, tmp_path):
    from vggnet.cli import build_parser

    assert cli(["--grid", "quick", "--dry-run", "--out", str(tmp_path / "g")]) == 0
    by_grid = capsys.readouterr().out
    assert by_grid.startswith("Plan (quick)")
    with pytest.raises(ValueError, match="--quick and --grid paper contradict"):
        cli(["--quick", "--grid", "paper", "--dry-run"])
    text = build_parser("reproduce")._subparsers._group_actions[0].choices["reproduce"].format_help()
    assert "--grid {small,quick,medium,paper}" in text and "--scale" not in text


def test_reproduce_package_modules_stay_small():
    """Issue 11: no room of the reproduction over 500 lines (the 1,700-line module it replaced was a hall)."""
    from pathlib import Path

    folder = Path(rp.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert {"plan.py", "execute.py", "findings.py", "report.py", "figures.py", "published.py"} <= set(sizes)
    assert all(n <= 500 for n in sizes.values()), sizes


def test_still_improving_is_the_plateau_schedules_own_rule():
    """The report's "still improving" count uses the schedule's threshold: a last epoch the schedule counts as
    progress (it resets the plateau's bad epochs) is "improving", a new best by no more than the threshold
    is "within" (the schedule counts it as a bad epoch), anything else "flat"."""
    import random

    from vggnet.reproduce.report import last_epoch_trend
    from vggnet.training import Plateau

    assert last_epoch_trend([0.30, 0.25, 0.248], 1e-3, "best") == "improving"
    assert last_epoch_trend([0.30, 0.25, 0.2495], 1e-3, "best") == "within"
    assert last_epoch_trend([0.30, 0.25, 0.26], 1e-3, "best") == "flat"
    rng = random.Random(0)
    for _ in range(500):
        errors = [rng.randint(200, 260) / 1000 for _ in range(rng.randint(2, 8))]
        plateau = Plateau(lr=0.01, patience=100, threshold=1e-3, max_decays=2, rule="best")  # no decay resets
        trend = Plateau(lr=0.01, patience=100, threshold=1e-3, max_decays=0, window=3)  # a plateau ends it
        for e in errors:
            plateau.step(e)
            trend.step(e)
        counted_as_progress = plateau.bad_epochs == 0  # the last step reset the schedule's bad epochs
        assert (last_epoch_trend(errors, 1e-3, "best") == "improving") == counted_as_progress, errors
        assert (last_epoch_trend(errors, 1e-3, "trend", 3) == "improving") == trend.improving(), errors
