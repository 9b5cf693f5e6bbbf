"""A study's spec: a :class:`lthdiff.config.Config` (the sections of ``lthdiff run``) plus its ``[study]`` section.

The spec decides the recorded *settings* (:func:`settings`): what makes two seeds' records comparable,
written to every seed's ``settings.json`` and compared on every later piece, so a records folder written
with other settings is refused before anything in it is touched.  Records go to ``[study] records`` (or
``--records``), by default ``./studies/<name>/`` under the current directory, never into the installed
package; the repository's own recorded studies ship read-only in :data:`RECORDED` and are copied into the
user's folder when a study of that name continues there (:func:`prepare_records`).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lthdiff.config import Config, ConfigError, load_config

__all__ = ["RECORDED", "OFFLINE_EXTRACTORS", "StudySpec", "settings", "load_spec", "check_records", "prepare_records",
           "spec_for"]

# The repository's recorded studies, shipped with the package (read them; continue them elsewhere).
RECORDED = Path(__file__).resolve().parent / "recorded"
# "auto" resolves by dataset, not by what is reachable, so a study's extractor is the same on every machine.
OFFLINE_EXTRACTORS = {"digits": "lthdiff-digits", "mnist5k": "lthdiff-mnist", "mnist": "lthdiff-mnist"}


def _extractor(cfg: Config) -> str:
    name = cfg.eval.feature_extractor
    if name != "auto":
        return name
    return OFFLINE_EXTRACTORS.get(cfg.data.name, "inception")


def settings(cfg: Config) -> dict[str, Any]:
    """The recorded settings of a study (keys as :data:`lthdiff.study.records.SETTINGS_KEYS`); options left at
    their defaults are left out, so studies recorded before an option existed keep their settings."""
    from lthdiff.lottery.imp import sparsity_schedule

    if cfg.imp.rewind != "init":
        raise ConfigError(f"[imp] rewind = {cfg.imp.rewind!r} is not accepted in a study; accepted: 'init' (the "
                          "ticket arm; add arms = ['late'] for rewinding to theta_K, ['continue'] for none)")
    if cfg.eval.sampler != "ddim":
        raise ConfigError(f"[eval] sampler = {cfg.eval.sampler!r} is not accepted in a study; accepted: 'ddim'")
    sched = [float(x) for x in cfg.imp.sparsities] or sparsity_schedule(cfg.imp.rounds, cfg.imp.prune_per_round)
    st = cfg.study
    out: dict[str, Any] = {
        "dataset": cfg.data.name, "image_size": cfg.data.image_size, "preset": cfg.model.preset,
        "steps": cfg.train.steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "schedule": sched,
        "rewind": "init", "controls": list(cfg.imp.controls), "n": cfg.eval.n, "sample_steps": cfg.eval.steps,
        "extractor": _extractor(cfg)}
    model = {k: v for k, v in (("block_out_channels", list(cfg.model.block_out_channels)),
                               ("pretrained", cfg.model.pretrained)) if v}
    for key, value in (("model", model), ("rounds_only", list(st.rounds_only)),
                       ("control_rounds", list(st.control_rounds)), ("masks_from", st.masks_from),
                       ("allocation", "" if cfg.imp.allocation == "global" else cfg.imp.allocation)):
        if value:
            out[key] = value
    bad = [r for r in st.rounds_only + st.control_rounds if r > len(sched)]
    if bad:
        raise ConfigError(f"[study] rounds_only / control_rounds name round {bad[0]}; accepted: 1 to {len(sched)}")
    return out


@dataclass
class StudySpec:
    """What ``lthdiff study run`` runs: the config, its settings, and where records and run folders go."""

    config: Config
    settings: dict[str, Any]
    records: Path  # the folder that holds <name>/
    run_root: Path  # run folders: <run_root>/seed_<N>/

    @property
    def name(self) -> str:
        return self.config.study.name

    @property
    def seeds(self) -> list[int]:
        return list(self.config.study.seeds)

    @property
    def arms(self) -> list[str]:
        return list(self.config.study.arms)

    @property
    def structured(self) -> list[Any]:
        """The structured networks (arm ``structured``): every reduction x importance x kind."""
        from .arms import structured_arms

        st = self.config.study
        return structured_arms(st.structured_reductions, st.structured_importances) if "structured" in st.arms else []

    @property
    def dir(self) -> Path:
        """The study's records: ``<records>/<name>/``."""
        return self.records / self.name

    def seed_dirs(self, seed: int) -> tuple[Path, Path]:
        """(records, run folder) of one seed."""
        return self.dir / f"seed_{seed}", self.run_root / f"seed_{seed}"


def load_spec(config: str | Path | Config, *, records: str | Path | None = None,
              seeds: Sequence[int] | None = None, run_root: str | Path | None = None) -> StudySpec:
    """The spec of a config file (or a shipped one by name) or a :class:`Config`; ``records``, ``seeds`` and
    ``run_root`` override the ``[study]`` keys.  Bad keys, values or arms raise :class:`ConfigError` (one line)."""
    from .arms import check_arms

    cfg = config if isinstance(config, Config) else load_config(config)
    if seeds:
        cfg.study.seeds = list(seeds)
    check_arms(cfg.study.arms, cfg.imp.controls)
    _check_structured(cfg)
    rec = Path(records or cfg.study.records or Path.cwd() / "studies")
    root = run_root or cfg.study.run_root or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "lthdiff" / cfg.study.name
    return StudySpec(cfg, settings(cfg), rec, Path(root))


def _check_structured(cfg: Config) -> None:
    from lthdiff.pruners.channels.importance import IMPORTANCES

    st = cfg.study
    bad = [r for r in st.structured_reductions if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
    if bad or ("structured" in st.arms and not st.structured_reductions):
        raise ConfigError(f"[study] structured_reductions = {st.structured_reductions!r} is not accepted; accepted: "
                          "fractions of MACs removed in (0, 1), at least one")
    bad = [i for i in st.structured_importances if i not in IMPORTANCES]
    if bad or ("structured" in st.arms and not st.structured_importances):
        raise ConfigError(f"[study] structured_importances has {bad[0] if bad else 'nothing'!r}; accepted: "
                          f"{', '.join(IMPORTANCES)}")


def prepare_records(spec: StudySpec) -> Path:
    """The study's records folder, ready to continue: when it does not exist yet and the package ships a
    recorded study of that name, a copy of it (every file: masks and kept weights too); the shipped one is
    never written to by a run started elsewhere."""
    if not spec.dir.exists() and (RECORDED / spec.name).is_dir() and spec.records.resolve() != RECORDED.resolve():
        tmp = spec.dir.with_name(spec.dir.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(RECORDED / spec.name, tmp)
        os.replace(tmp, spec.dir)  # whole or not at all
    return spec.dir


def check_records(spec: StudySpec) -> None:
    """Refuse, before anything is written, a records folder that is not this study's: a ``<name>/`` that holds
    files but no seed folders, or seed folders recorded with other settings (one line naming the first key)."""
    from .records import SETTINGS_KEYS, read_settings, seed_dirs

    src = spec.dir if spec.dir.exists() else RECORDED / spec.name
    if not src.exists():
        return
    dirs = seed_dirs(src)
    if not dirs and any(src.iterdir()):
        raise ConfigError(f"{src} holds files but no seed_<N>/ folders: not a study's records; use another "
                          "[study] name or --records")
    for d in dirs:
        old = read_settings(d)
        diff = [k for k in SETTINGS_KEYS if old.get(k) != spec.settings.get(k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"{d} was recorded with other settings ({k}: recorded {old.get(k)!r}, this config "
                              f"{spec.settings.get(k)!r}); nothing was written: use another [study] name or --records")


def spec_for(name: str, *, dataset: str = "digits", image_size: int = 16, preset: str = "tiny", width: float = 1.0,
             steps: int = 6000, seeds: Sequence[int] = (0, 1, 2), arms: Sequence[str] = ("ticket",),
             rounds: int = 5, prune_per_round: float = 0.5, n: int = 2000, sample_steps: int = 10,
             records: str | Path | None = None, run_root: str | Path | None = None, **study: Any) -> StudySpec:
    """A study's spec from a few plain values (notebook 06's widgets): ``width`` multiplies the preset's channels
    (0.5: the tiny UNet's 32, 48, 48 become 16, 24, 24; rounded to the UNet's 8 channels a group).  Starts from
    the shipped config of that name when there is one (the repository's recorded studies), so the defaults
    continue it; every value given overrides it."""
    from lthdiff.config import CONFIGS_DIR, StudyConfig, from_params

    cfg = load_config(name) if (CONFIGS_DIR / f"{name}.toml").exists() else Config()
    cfg = from_params(dataset, image_size, preset, width=width, base=cfg)
    cfg.train.steps, cfg.imp.rounds, cfg.imp.prune_per_round = steps, rounds, prune_per_round
    cfg.eval.n, cfg.eval.steps = n, sample_steps
    if cfg.eval.feature_extractor == "auto" and dataset in OFFLINE_EXTRACTORS:
        cfg.eval.feature_extractor = OFFLINE_EXTRACTORS[dataset]
    known = {f for f in StudyConfig.__dataclass_fields__}
    bad = [k for k in study if k not in known]
    if bad:
        raise ConfigError(f"unknown key [study] {bad[0]}; accepted: {', '.join(sorted(known))}")
    cfg.study.name, cfg.study.seeds, cfg.study.arms = name, list(seeds), list(arms)
    for k, v in study.items():
        setattr(cfg.study, k, v)
    from lthdiff.config import from_dict

    from_dict(cfg.to_dict())  # every value checked as a config file's would be
    return load_spec(cfg, records=records, run_root=run_root)

