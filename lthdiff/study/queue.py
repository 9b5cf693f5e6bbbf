"""The local work queue of a study: workers on one machine share the networks through the records and a lock
file a network (in the seed's run folder), and :func:`status` says what is recorded, running and left.

Each worker takes, from the seed with the most networks left (its chain is the longest sequential path, so
starting it first keeps every worker busy to the end; ties by the order of the seeds) and in the order of
:func:`lthdiff.study.arms.plan`, the first unrecorded network whose inputs are recorded and that no live
process holds; it waits while the rest wait on held networks.  ``jobs`` workers are that many processes
(``lthdiff study run --jobs J``), one torch thread each by default.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import records as R
from .arms import plan, structured_arms, variant_class
from .spec import StudySpec, prepare_records

__all__ = ["left", "take_lock", "held", "work", "run_local", "status"]


def _done(seed_dir: Path) -> set[tuple[int, str]]:
    return {(int(row["round"]), row["variant"]) for row in R.read_networks(seed_dir)} if seed_dir.is_dir() else set()


def left(spec: StudySpec, seed: int) -> list[tuple[int, str]]:
    """The networks of ``seed`` not recorded yet, in plan order."""
    done = _done(spec.seed_dirs(seed)[0])
    return [n for n in plan(spec.settings, spec.arms, spec.structured) if n not in done]


def _live(pid: str) -> bool:
    """Whether process ``pid`` runs; without ``/proc`` every pid counts as live, so no lock is ever stolen."""
    if not pid.isdigit():
        return False
    return Path(f"/proc/{pid}").exists() if Path("/proc").is_dir() else True


def take_lock(path: Path) -> bool:
    """Take the lock file ``path`` for this process; False when a live process holds it (a stale one is taken)."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = path.read_text().strip()
            except FileNotFoundError:
                continue
            if _live(pid) or not pid:  # an empty file: its writer is between open and write
                return False
            path.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def held(run_dir: Path) -> list[str]:
    """The networks of one seed that live processes are working on (their lock files)."""
    out = []
    for p in sorted(run_dir.glob("lock_r*")) if run_dir.is_dir() else []:
        try:
            if _live(p.read_text().strip()):
                out.append(p.name[len("lock_"):])
        except FileNotFoundError:
            pass
    return out


def _ready(spec: StudySpec, seed: int, r: int, variant: str) -> bool:
    rec = spec.seed_dirs(seed)[0]
    return variant_class(variant, r).ready(spec.settings, rec, r)


def work(spec: StudySpec, *, max_networks: int = -1, threads: int = 1, poll_s: float = 30.0,
         log: Any = print) -> int:
    """One worker: train, score and record networks until none is left (or ``max_networks``); returns how many."""
    import torch

    from .engine import SeedContext, run_network

    prepare_records(spec)
    contexts: dict[int, SeedContext] = {}
    done_now, said = 0, []
    before = torch.get_num_threads()
    # one thread a process: results are bit-identical only for the same thread count (recorded in every row)
    torch.set_num_threads(threads)
    try:
        while max_networks != done_now:
            picked, waiting = None, []
            todo = {seed: left(spec, seed) for seed in spec.seeds}
            for seed in sorted(spec.seeds, key=lambda x: -len(todo[x])):
                record_dir, run_dir = spec.seed_dirs(seed)
                run_dir.mkdir(parents=True, exist_ok=True)
                for r, variant in todo[seed]:
                    lock = run_dir / f"lock_{R.network_name(r, variant)[:-5]}"
                    if _ready(spec, seed, r, variant) and take_lock(lock):
                        picked = (seed, r, variant, lock)
                        break
                if picked:
                    break
                h = held(run_dir) if todo[seed] else []
                if h:
                    waiting.append(f"seed {seed}: {', '.join(h)}")
            if picked is None:
                if not waiting:
                    return done_now
                if waiting != said:  # one line when what it waits for changes, not one every poll
                    log(f"waiting for {'; '.join(waiting)}")
                    said = waiting
                time.sleep(poll_s)
                continue
            seed, r, variant, lock = picked
            try:
                if (r, variant) in _done(spec.seed_dirs(seed)[0]):  # recorded by another worker since the scan
                    continue
                if seed not in contexts:
                    contexts[seed] = SeedContext(spec.config, spec.settings, seed, *spec.seed_dirs(seed))
                t0 = time.perf_counter()
                row = run_network(contexts[seed], r, variant)
            finally:
                lock.unlink(missing_ok=True)
            done_now += 1
            log(f"seed {seed} round {r} {variant} ({row['sparsity']:.1%}): FID {row['fid']:.4g}, KID(test) "
                f"{row['kid_test']:.4g}, {time.perf_counter() - t0:.0f} s -> {spec.seed_dirs(seed)[0]}")
        return done_now
    finally:
        torch.set_num_threads(before)


def run_local(spec: StudySpec, argv: Sequence[str], jobs: int = 1, **kw: Any) -> int:
    """``jobs`` workers side by side: this process alone, or ``jobs`` processes of ``lthdiff study run``
    (``argv`` without ``--jobs``) that share the networks through the records and lock files."""
    if jobs <= 1:
        return work(spec, **kw)
    prepare_records(spec)  # once, before the workers race to copy
    procs = [subprocess.Popen([sys.executable, "-m", "lthdiff.cli", "study", "run", *argv, "--jobs", "1"])
             for _ in range(jobs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"a worker failed (exit codes {codes})")
    return sum(len(R.read_networks(spec.seed_dirs(s)[0])) for s in spec.seeds if spec.seed_dirs(s)[0].is_dir())


def _most(values: list[Any]) -> Any:
    return max(set(values), key=values.count) if values else None


def status(study_dir: str | Path, run_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Per seed of a records folder: networks recorded, running (a live lock in ``run_root``) and left, the
    measured seconds a network (median of the trained ones), an estimate of the time left on one worker, and
    the networks trained on another device, CPU or thread count than the rest of the seed.  A seed's plan is read
    from its records: the arms it has networks of (a structured level or importance none of whose networks is
    recorded yet is not counted)."""
    study_dir = Path(study_dir)
    out = []
    for d in R.seed_dirs(study_dir):
        st = R.read_settings(d)
        rows = R.read_networks(d)
        arms = ["ticket"] + [a for a in ("late", "continue") if any(x["variant"] == a for x in rows)]
        # the records hold no config: the structured levels and importances are those a recorded network names
        found = [variant_class(x["variant"], 0) for x in rows if x["round"] == 0 and x["variant"].startswith("structured_")]
        structured = structured_arms(sorted({a.reduction for a in found}),
                                     list(dict.fromkeys(a.importance for a in found if a.importance)))
        done = {(int(x["round"]), x["variant"]) for x in rows}
        todo = [n for n in plan(st, arms + ["structured"] * bool(structured), structured) if n not in done]
        secs = [x["wall_seconds_this_piece"] for x in rows if isinstance(x.get("wall_seconds_this_piece"), (int, float))
                and x.get("train_seconds") == x.get("train_seconds")]  # NaN train time: a snapshot, not trained
        per = statistics.median(secs) if secs else None
        common = {k: _most([x.get(k) for x in rows if x.get(k) is not None]) for k in ("device", "cpu", "threads")}
        # rows written before the CPU model was recorded say nothing about it, so they never count as elsewhere
        odd = [f"r{x['round']:02d}_{x['variant']} ({x.get('device')}, {x.get('cpu', 'cpu model not recorded')}, "
               f"{x.get('threads')} threads)" for x in rows
               if any(x.get(k) is not None and common[k] is not None and x.get(k) != common[k] for k in common)]
        run_dir = Path(run_root) / d.name if run_root else None
        out.append({"seed": st["seed"], "recorded": len(rows), "left": len(todo), "next": todo[:3],
                    "running": held(run_dir) if run_dir else [], "seconds_per_network": per,
                    "hours_left_one_worker": per * len(todo) / 3600 if per is not None else None,
                    "other_machine": odd})
    return out
