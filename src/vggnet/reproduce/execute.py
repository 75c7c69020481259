"""Executing a plan: run folders (finished, interrupted, made differently), the tasks of a worker process, the
scheduler (a process pool on CPU cores, one process on a GPU, every process under torchrun), the cache of
evaluation results, and the subset of the data a grid trains on.

Runs that finished are reused when the command runs again, an interrupted run is resumed from its newest
checkpoint (``train(..., resume=...)``), and a run folder made with a different config stops the command with
a message instead of being mixed into the tables.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import shutil
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .. import runs as runs_mod
from ..config import HOW_IT_RUNS
from ..data import EMBEDDED, materialise, resolve_data
from ..evaluation import evaluate, resolve_eval_samples
from ..files import atomic_write_text
from ..plots import read_epochs
from ..report import provenance
from ..runs import load_run
from ..runtime import is_main, rank, setup_distributed, world_size
from ..training import train
from .plan import EvalSpec, Plan, RunSpec, cuda_available
from .published import EVAL_PROTOCOLS

# ---------------------------------------------------------------------------------------------------------------
# Run folders: finished, interrupted, or made differently

MARKER = "reproduce.json"
# Fields that may differ between the plan and a finished run without changing its numbers: how it ran and
# logged (config.HOW_IT_RUNS, the keys a resumed run may change too) and where its init came from (a moved
# output folder keeps its runs).
_NEUTRAL = HOW_IT_RUNS | {"init_from"}


def run_state(spec: RunSpec) -> str:
    """ "done" (finished: final weights and the marker), "resume" (a checkpoint to continue) or "new"."""
    folder = spec.folder
    if (folder / MARKER).is_file() and runs_mod.is_run(folder):
        return "done"
    if any((folder / "checkpoints").glob("ckpt-*.pt")):
        return "resume"
    return "new"


def check_config(spec: RunSpec) -> None:
    """Stop when an existing run folder was made with another config than the plan's (say which fields)."""
    path = spec.folder / runs_mod.CONFIG_FILE
    if not path.is_file():
        return
    with open(path, "rb") as f:
        saved = tomllib.load(f)
    want = spec.config().to_dict()
    diff = [
        f"{k}: {saved.get(k)!r} there, {v!r} in the plan"
        for k, v in want.items()
        if k not in _NEUTRAL and k in saved and saved[k] != v
    ]
    if diff:
        raise ValueError(
            f"{spec.folder} holds a run made with another config ({'; '.join(diff[:4])}); remove that folder or "
            f"pass another --out"
        )


def _marker(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MARKER).read_text())


# ---------------------------------------------------------------------------------------------------------------
# Tasks: what a worker process (or the main process) executes


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


@contextlib.contextmanager
def _output_to(log: Path | None):
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def train_task(spec: RunSpec, log: str | None = None) -> dict[str, Any]:
    """Train (or resume) one run of the plan and write its marker; returns the marker."""
    folder = spec.folder
    state = run_state(spec)
    t0 = time.perf_counter()
    with _output_to(Path(log) if log else None):
        if state == "resume":
            # flags that only say where to run may change on resume; the rest comes from the checkpoint
            train({k: spec.overrides[k] for k in ("device", "workers") if k in spec.overrides}, resume=folder)
        else:  # new, or started but stopped before its first checkpoint: train() starts it again from step 0
            train(spec.config())
    seconds = time.perf_counter() - t0
    if not is_main():
        return {}
    epochs = read_epochs(folder)
    marker = dict(
        name=spec.name,
        seconds=round(seconds, 1),
        resumed=state == "resume",
        epochs=len(epochs),
        val_top1_err=epochs[-1]["val_top1_err"] if epochs else None,
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1) + "\n")
    return marker


def eval_task(spec: EvalSpec, folders: list[str], device: str) -> dict[str, Any]:
    """Evaluate one EvalSpec; errors in percent.

    ``scales``: dense evaluation at each test scale on its own (Table 3 takes the single test scale, the plot of
    error against Q all of them) and at the multi-scale set (Table 4). ``protocols``: the two jittered nets with
    dense, multi-crop and both at the multi-scale set, each and fused (Tables 5 and 6).
    """
    loaded = [load_run(f) for f in folders]
    flip = all(bool(r.config.get("flip", True)) for r in loaded)  # a net never shown mirror images is not asked
    samples = resolve_eval_samples(loaded[0])
    t0 = time.perf_counter()

    def pct(r) -> list[float]:
        return [100 * r.top1_err, 100 * r.top5_err]

    if spec.kind == "protocols":
        res = evaluate(loaded, samples, protocols=list(EVAL_PROTOCOLS), scales=spec.multi, flip=flip, device=device)
        rows = {name: {p: pct(res.get(p, name)) for p in EVAL_PROTOCOLS} for name in [*res.nets, "fused"]}
        # the rows by run name (evaluate names nets after their folders)
        named = dict(zip([*spec.runs, "fused"], [rows[n] for n in [*res.nets, "fused"]]))
        scales = {spec.runs[i]: res.get("dense", n).scales for i, n in enumerate(res.nets)}
        return dict(
            kind=spec.kind,
            runs=spec.runs,
            rows=named,
            scales=scales,
            n=res.n,
            k=res.k,
            flip=flip,
            classes=res.num_classes,
            seconds=round(time.perf_counter() - t0, 1),
        )
    run = loaded[0]
    per_q = {}
    for q in sorted(set(spec.multi) | {spec.single}):
        res = evaluate(run, samples, protocols="dense", scales=[q], flip=flip, device=device)
        per_q[str(q)] = pct(res.get("dense"))
    if len(spec.multi) > 1:
        multi_err = pct(
            evaluate(run, samples, protocols="dense", scales=spec.multi, flip=flip, device=device).get("dense")
        )
    else:
        multi_err = per_q[str(spec.multi[0])]
    return dict(
        kind=spec.kind,
        runs=spec.runs,
        single_q=spec.single,
        multi_qs=spec.multi,
        per_q=per_q,
        multi=multi_err,
        n=res.n,
        k=res.k,
        classes=res.num_classes,
        flip=flip,
        seconds=round(time.perf_counter() - t0, 1),
    )


def _eval_cache_key(plan: Plan, spec: EvalSpec) -> dict[str, Any]:
    """What a cached evaluation depends on: its runs' finish stamps and the evaluation settings."""
    return dict(
        sources={n: _marker(plan.run(n).folder).get("finished") for n in spec.runs},
        kind=spec.kind,
        single=spec.single,
        multi=spec.multi,
    )


# ---------------------------------------------------------------------------------------------------------------
# Executing a plan


@dataclass
class Task:
    name: str
    kind: str  # "train" or "eval"
    deps: list[str]
    spec: RunSpec | EvalSpec
    priority: int = 0  # more dependants first: the long chains of the staged plan start early


def _tasks(plan: Plan) -> list[Task]:
    tasks = [Task(r.name, "train", [r.depends] if r.depends else [], r) for r in plan.runs]
    tasks += [Task("eval:" + e.name, "eval", list(e.runs), e) for e in plan.evals]
    children: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        for d in t.deps:
            children[d].append(t.name)

    def descendants(name: str) -> int:
        return sum(1 + descendants(c) for c in children[name])

    for t in tasks:
        t.priority = descendants(t.name)
    return tasks


@dataclass
class GridProgress:
    """What the execution of a plan has done so far (shared by the schedulers), and how it reports it."""

    plan: Plan
    log: Callable[[str], None]
    t_start: float = field(default_factory=time.perf_counter)
    done: set[str] = field(default_factory=set)  # task names
    markers: dict[str, Any] = field(default_factory=dict)
    evals: dict[str, Any] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def clock(self) -> str:
        s = int(time.perf_counter() - self.t_start)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def reuse(self, tasks: list[Task]) -> None:
        """Finished runs and fresh cached evaluations: done before anything starts."""
        for t in tasks:
            if t.kind == "train" and run_state(t.spec) == "done":
                self.markers[t.name] = _marker(t.spec.folder)
                self.reused.append(t.name)
                self.done.add(t.name)
        for t in tasks:
            if t.kind == "eval" and all(d in self.done for d in t.deps):
                cached = _cached_eval(self.plan, t.spec)
                if cached is not None:
                    self.evals[t.spec.name] = cached
                    self.done.add(t.name)
        if self.reused:
            self.log(f"reusing {len(self.reused)} finished run(s) in {self.plan.out / 'runs'}")

    def finish(self, t: Task, result: dict[str, Any], seconds: float) -> None:
        self.done.add(t.name)
        if t.kind == "train":
            self.markers[t.name] = result
            self.trained.append(t.name)
            err = result.get("val_top1_err")
            self.log(
                f"{self.clock()} trained {t.name}: {result.get('epochs')} epochs in {seconds:.0f}s"
                + (f", val top-1 err {100 * err:.2f}% (one centre crop)" if err is not None else "")
            )
        else:
            self.evals[t.spec.name] = result
            _save_eval(self.plan, t.spec, result)
            self.log(f"{self.clock()} evaluated {t.spec.name} in {seconds:.0f}s")

    def starting(self, t: Task, log_file: str | None = None) -> None:
        where = f" (log: {log_file})" if log_file and t.kind == "train" else ""
        self.log(f"{self.clock()} {'training' if t.kind == 'train' else 'evaluating'} {t.spec.name}{where}")


def execute(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every run that is not finished and evaluate every run whose cached result is stale.

    Returns {"markers": {run: marker}, "evals": {eval name: result}, "trained": [...], "reused": [...],
    "provenance": ..., "seconds": wall time}. With ``plan.jobs`` > 1, runs go to worker processes (spawned, one
    thread each) as soon as the run they start from is finished. Under torchrun (WORLD_SIZE > 1) every process
    trains the runs in plan order (DDP inside train()), then rank 0 alone evaluates.
    """
    progress = GridProgress(plan, log)
    info = provenance(plan.device)  # at the start: the code and machine that run the plan
    plan.out.mkdir(parents=True, exist_ok=True)
    for r in plan.runs:
        check_config(r)
    _prepare_data(plan)
    tasks = _tasks(plan)
    progress.reuse(tasks)
    pending = [t for t in tasks if t.name not in progress.done]
    if world_size() > 1:
        _execute_distributed(plan, pending, progress)
    elif plan.jobs <= 1:
        for t in pending:  # plan order is dependency order
            progress.starting(t)
            progress.finish(t, *_timed(t, plan, None))
    else:
        _execute_pool(plan, pending, progress)
    return dict(
        markers=progress.markers,
        evals=progress.evals,
        trained=progress.trained,
        reused=progress.reused,
        provenance=info,
        seconds=round(time.perf_counter() - progress.t_start, 1),
    )


def _run_task(t: Task, plan: Plan, log_file: str | None) -> dict[str, Any]:
    if t.kind == "train":
        return train_task(t.spec, log_file)
    folders = [str(plan.run(n).folder) for n in t.spec.runs]
    return eval_task(t.spec, folders, plan.device)


def _timed(t: Task, plan: Plan, log_file: str | None) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    result = _run_task(t, plan, log_file)
    return result, time.perf_counter() - t0


def _execute_pool(plan: Plan, pending: list[Task], progress: GridProgress) -> None:
    """A small scheduler: up to ``plan.jobs`` tasks at a time, each as soon as its dependencies are done."""
    threads = max(1, (os.cpu_count() or 1) // plan.jobs)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    waiting = sorted(pending, key=lambda t: -t.priority)
    running: dict[futures.Future, Task] = {}
    done = progress.done
    with futures.ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        try:
            while waiting or running:
                ready = [t for t in waiting if all(d in done for d in t.deps)]
                for t in ready[: plan.jobs - len(running)]:
                    waiting.remove(t)
                    log_file = str(plan.out / "logs" / f"{t.name.replace(':', '-')}.log")
                    running[pool.submit(_timed, t, plan, log_file)] = t
                    progress.starting(t, log_file)
                if not running:
                    missing = sorted({d for t in waiting for d in t.deps if d not in done})
                    raise RuntimeError(f"the plan cannot continue: missing runs {missing}")
                finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for fut in finished:
                    t = running.pop(fut)
                    try:
                        result, seconds = fut.result()
                    except Exception as e:
                        where = f" (log: {plan.out / 'logs' / (t.name + '.log')})" if t.kind == "train" else ""
                        raise RuntimeError(f"{t.name} failed{where}: {type(e).__name__}: {e}") from e
                    progress.finish(t, result, seconds)
        except BaseException:
            # Ctrl-C reaches the workers too: each saves a checkpoint; queued tasks never start
            for fut in running:
                fut.cancel()
            raise


def _execute_distributed(plan: Plan, pending: list[Task], progress: GridProgress) -> None:
    """torchrun: every process trains the runs in order (DDP); then the group closes and rank 0 evaluates."""
    setup_distributed("cuda" if plan.device != "cpu" and cuda_available() else "cpu")
    main = rank() == 0
    for t in (t for t in pending if t.kind == "train"):
        dist.barrier()  # every process decides on the same files
        if run_state(t.spec) == "done":
            continue
        if main:
            progress.starting(t)
        result, seconds = _timed(t, plan, None)
        if main:
            progress.finish(t, result, seconds)
    dist.barrier()
    dist.destroy_process_group()
    if not main:
        return
    for t in (t for t in pending if t.kind == "eval"):
        progress.finish(t, *_timed(t, plan, None))


def _prepare_data(plan: Plan) -> None:
    """Materialise an embedded data set once, before several processes would each try; make the subset."""
    if plan.subset:
        make_subset(*plan.subset)
    for name in {r.config().data for r in plan.runs}:
        if name in EMBEDDED:
            materialise(name)


def make_subset(source: str, folder: str | os.PathLike, per_class: tuple[int, int]) -> Path:
    """A smaller copy of a data set: the first ``per_class`` = (N, M) training and validation images of each
    class, as FOLDER/{train,val}/<class>/. Written under a temporary name and renamed: complete or absent."""
    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return folder
    train, val, classes = resolve_data(source)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for split, samples, n in (("train", train, per_class[0]), ("val", val, per_class[1])):
        taken: dict[int, int] = defaultdict(int)
        for path, label in samples:
            if taken[label] < n:
                taken[label] += 1
                dst = tmp / split / classes[label] / f"{taken[label]:05d}{Path(path).suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
    tmp.rename(folder)
    return folder


def _cached_eval(plan: Plan, spec: EvalSpec) -> dict[str, Any] | None:
    path = plan.out / "eval" / f"{spec.name}.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved["result"] if saved.get("key") == _eval_cache_key(plan, spec) else None


def _save_eval(plan: Plan, spec: EvalSpec, result: dict[str, Any]) -> None:
    path = plan.out / "eval" / f"{spec.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(dict(key=_eval_cache_key(plan, spec), result=result), indent=1)
    atomic_write_text(path, body + "\n")


__all__ = [
    "MARKER",
    "GridProgress",
    "Task",
    "check_config",
    "eval_task",
    "execute",
    "make_subset",
    "run_state",
    "train_task",
]
