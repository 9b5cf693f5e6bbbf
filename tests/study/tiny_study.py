"""A tiny study config (digits 16 px, tiny UNet) for the tests."""
from __future__ import annotations

import json
from pathlib import Path


def write_config(path: Path, *, steps: int = 20, rounds: int = 1, seeds=(3,), arms=("ticket",),
                 controls=("random_reinit",), n: int = 8, sample_steps: int = 2, batch_size: int = 8,
                 name: str = "s", **study) -> Path:
    """A tiny study config (digits 16 px, tiny UNet) as TOML; ``study`` adds [study] keys."""
    lst = lambda xs: json.dumps(list(xs))  # noqa: E731  (TOML arrays read like JSON ones)
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in study.items())
    path.write_text(f"""[train]
steps = {steps}
batch_size = {batch_size}
checkpoint_every = 5
[imp]
rounds = {rounds}
controls = {lst(controls)}
[eval]
n = {n}
steps = {sample_steps}
feature_extractor = "lthdiff-digits"
[study]
name = "{name}"
seeds = {lst(seeds)}
arms = {lst(arms)}
{extra}""")
    return path
