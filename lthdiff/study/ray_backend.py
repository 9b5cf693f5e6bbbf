"""The study on a Ray cluster (``lthdiff study run CONFIG --backend ray [--address ADDR]``): the same plan as the
local queue, one Ray task a network, the chain as task dependencies, the driver the single writer of the records.

The driver submits every unrecorded network at once.  A task's arguments are the seed's records as they stand
(one object a seed) and the *outputs* of the networks it starts from (:meth:`lthdiff.study.arms.Arm.deps`), so
Ray starts it only when they have finished, on any node, with no shared filesystem: the task writes those files
into a scratch copy of the records, trains the network through :func:`lthdiff.study.engine.run_network`, and
returns the files it added (the row, the next mask, kept weights).  The driver writes each result into the
records as it lands (products first, the row last), so stopping the driver loses only the networks in flight
and running it again continues from the records.  Each task asks for ``[study] num_cpus`` / ``num_gpus``.
A network whose inputs live in another node's run folder (the dense snapshot at T/2, its last checkpoint) is
trained again from the seed there; training is deterministic, so on the same hardware it is the same network.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lthdiff.config import Config
from lthdiff.store.io import read_json, write_with
from . import records as R
from .arms import variant_class
from .queue import left
from .spec import StudySpec, prepare_records

__all__ = ["run_ray", "network_task"]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} if d.is_dir() else {}


def network_task(cfg: Config, settings: dict[str, Any], name: str, seed: int, r: int, variant: str,
                 run_root: str, threads: int, base: dict[str, dict[str, bytes]], *deps: dict[str, bytes]) -> dict[str, bytes]:
    """One network on a Ray worker: ``base`` is ``{study name: files of seed_<N>}`` (this study's and the
    ``masks_from`` one), ``deps`` the files the networks it starts from returned.  Returns the files it added."""
    import torch

    from .engine import SeedContext, run_network

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lthdiff-ray-") as tmp:
        for study, files in base.items():
            d = Path(tmp) / study / f"seed_{seed}"
            d.mkdir(parents=True, exist_ok=True)
            for fname, data in files.items():
                (d / fname).write_bytes(data)
        rec = Path(tmp) / name / f"seed_{seed}"
        for out in deps:
            for fname, data in out.items():
                (rec / fname).write_bytes(data)
        before = set(_files(rec))
        ctx = SeedContext(cfg, settings, seed, rec, Path(run_root) / f"seed_{seed}")
        run_network(ctx, r, variant)
        return {k: v for k, v in _files(rec).items() if k not in before}


def _write(rec: Path, files: dict[str, bytes]) -> None:
    """Products first, the row (``r<RR>_*.json``) last: a row marks its network done."""
    rec.mkdir(parents=True, exist_ok=True)
    for fname in sorted(files, key=lambda f: (f.startswith("r") and f.endswith(".json"), f)):
        if not (rec / fname).exists():
            write_with(rec / fname, lambda tmp, data=files[fname]: tmp.write_bytes(data))


def run_ray(spec: StudySpec, *, address: str | None = None, max_networks: int = -1, log: Any = print) -> int:
    """Run the study's unrecorded networks as Ray tasks (module doc); returns how many were recorded."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError("--backend ray needs Ray: pip install 'lthdiff[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    prepare_records(spec)
    st = spec.config.study
    task = ray.remote(num_cpus=st.num_cpus, num_gpus=st.num_gpus, max_retries=1)(network_task)
    refs: dict[tuple[int, int, str], Any] = {}
    for seed in spec.seeds:
        rec = spec.seed_dirs(seed)[0]
        base = {spec.name: _files(rec)}
        if spec.settings.get("masks_from"):
            base[spec.settings["masks_from"]] = _files(spec.dir.parent / spec.settings["masks_from"] / rec.name)
        base_ref = ray.put(base)
        for r, variant in left(spec, seed):
            deps = [refs[(seed, *d)] for d in variant_class(variant, r).deps(spec.settings, r) if (seed, *d) in refs]
            refs[(seed, r, variant)] = task.remote(spec.config, spec.settings, spec.name, seed, r, variant,
                                                   str(spec.run_root), st.threads, base_ref, *deps)
    pending = {ref: key for key, ref in refs.items()}
    done = 0
    try:
        while pending and done != max_networks:
            ready, _ = ray.wait(list(pending), num_returns=1)
            seed, r, variant = pending.pop(ready[0])
            files = ray.get(ready[0])
            _write(spec.seed_dirs(seed)[0], files)
            done += 1
            row = read_json(spec.seed_dirs(seed)[0] / R.network_name(r, variant))
            log(f"seed {seed} round {r} {variant} ({row['sparsity']:.1%}): FID {row['fid']:.4g} (ray) -> "
                f"{spec.seed_dirs(seed)[0]}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return done
