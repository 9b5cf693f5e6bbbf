"""A study's records, network by network: the files under ``<records>/<name>/seed_<N>/``.

A study (``lthdiff study run``) is split into pieces of one trained network, so a stop loses at most one
network and any machine holding the records continues it.  The records are the single source of truth:
the aggregate, the README block, the registry rows and the figures are rebuilt from them.  Per seed:

* ``settings.json`` - the study's settings (:func:`lthdiff.study.spec.settings`), the seed and theta_0's
  digest; written once, and a later piece with other settings is refused;
* ``r<RR>_<variant>.json`` - one trained network: round, variant, sparsity, FID/KID, memorisation, loss at
  init, final loss, steps, wall time, device, threads, torch version, the code's commit;
* ``mask_r<RR>.npz``, ``mask_<arm>_r<RR>.npz`` - the mask a round trains (:func:`lthdiff.masks.save_packed`):
  theta_0 comes from the seed, so the masks *are* the tickets and the chain continues from them;
* ``weights_r00.safetensors``, ``weights_continue_r<RR>.safetensors``, ``weights_theta_k.safetensors`` - weights a
  chain carries from one network to the next (only the kept values of masked tensors).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from lthdiff.store.io import read_json, save_tensors, load_tensors, write_json

__all__ = ["SETTINGS_KEYS", "network_name", "write_settings", "read_settings", "write_network", "read_networks",
           "save_kept_weights", "load_kept_weights", "seed_dirs", "check_same_settings",
           "code_commit"]

# What makes two seeds' records comparable; everything else in settings.json is per seed.
SETTINGS_KEYS = ("dataset", "image_size", "preset", "steps", "batch_size", "lr", "schedule", "rewind",
                 "controls", "n", "sample_steps", "extractor", "model", "rounds_only", "control_rounds",
                 "masks_from", "allocation")
_NAME = re.compile(r"^r(\d\d)_([a-z0-9_.]+)\.json$")


def network_name(round: int, variant: str) -> str:
    """The record file of a network: ``r03_random_reinit.json``."""
    if not re.fullmatch(r"[a-z0-9_.]+", variant):
        raise ValueError(f"variant {variant!r} must be lower-case letters, digits, '_' or '.'")
    return f"r{round:02d}_{variant}.json"


def write_settings(seed_dir: str | Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``settings.json`` for a new seed, or check a recorded one; returns the recorded settings.

    Raises ``ValueError`` naming every key whose value differs from the recorded one, so records
    of two protocols never mix in one seed folder.
    """
    seed_dir = Path(seed_dir)
    path = seed_dir / "settings.json"
    settings = json.loads(json.dumps(dict(settings)))  # tuples -> lists, as they read back
    if path.exists():
        old = read_json(path)
        diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
        if diff:
            detail = "; ".join(f"{k}: recorded {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path} was recorded with other settings ({detail}); use another --name or the "
                             "recorded settings")
        return old
    seed_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)
    return settings


def read_settings(seed_dir: str | Path) -> dict[str, Any]:
    path = Path(seed_dir) / "settings.json"
    if not path.exists():
        raise FileNotFoundError(f"{seed_dir} holds no settings.json: not a seed folder of a recorded study")
    return read_json(path)


def write_network(seed_dir: str | Path, row: Mapping[str, Any]) -> Path:
    """Record one network's row (atomically); an existing record is never overwritten."""
    path = Path(seed_dir) / network_name(int(row["round"]), str(row["variant"]))
    if path.exists():
        raise FileExistsError(f"{path} is already recorded; delete it first to record the network again")
    return write_json(path, dict(row))


def read_networks(seed_dir: str | Path) -> list[dict[str, Any]]:
    """Every recorded network of a seed folder, by round then variant."""
    out = []
    for p in sorted(Path(seed_dir).glob("r[0-9][0-9]_*.json")):
        if _NAME.match(p.name):
            out.append(read_json(p))
    return out


def seed_dirs(study_dir: str | Path) -> list[Path]:
    """The ``seed_<N>`` folders of a study, by seed."""
    dirs = [d for d in Path(study_dir).glob("seed_*") if d.is_dir() and d.name[5:].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name[5:]))


def check_same_settings(settings: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The common settings of several seeds; ``ValueError`` naming the keys that differ."""
    settings = list(settings)
    if not settings:
        raise ValueError("no seed folders with settings.json to aggregate")
    keys = [k for k in SETTINGS_KEYS if any(k in s for s in settings)]  # options a study never set stay out
    first = {k: settings[0].get(k) for k in keys}
    for s in settings[1:]:
        diff = [k for k in keys if s.get(k) != first[k]]
        if diff:
            detail = "; ".join(f"{k}: {first[k]!r} (seed {settings[0].get('seed')}) vs {s.get(k)!r} "
                               f"(seed {s.get('seed')})" for k in diff)
            raise ValueError(f"records with different settings cannot be aggregated: {detail}")
    return first


# --------------------------------------------------------------------------- kept weights
def save_kept_weights(path: str | Path, state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> Path:
    """Trained weights in compressed sparse form: for masked tensors only the kept values (in
    row-major order of the mask), every other tensor whole; safetensors with a checksum."""
    out = {}
    for k, v in state.items():
        m = mask.get(k)
        out[k] = v.detach().cpu()[m] if m is not None and m.shape == v.shape else v.detach().cpu()
    return save_tensors(path, out, {"sparse_keys": [k for k in state if k in mask]})


def load_kept_weights(path: str | Path, template: Mapping[str, torch.Tensor],
                      mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full state dict back from :func:`save_kept_weights`: kept values scattered into zeros."""
    tensors, meta = load_tensors(path)
    state = {}
    for k, v in template.items():
        t = tensors[k]
        if k in meta.get("sparse_keys", []):
            full = torch.zeros_like(v)
            full[mask[k]] = t
            t = full
        state[k] = t
    return state


def code_commit(repo: str | Path | None = None) -> str:
    """The git commit of the code that wrote a record (``"unknown"`` outside a git checkout); a
    ``+dirty`` suffix when tracked files under ``lthdiff/`` differ from it."""
    import subprocess

    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "lthdiff"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
