"""Experiment descriptions: typed sections read from TOML/JSON/YAML with clear errors.

A config names the dataset, the model, the dense training, the IMP schedule, the evaluation and
where outputs go.  Unknown sections or keys, and values of the wrong type or outside their
accepted set, raise :class:`ConfigError` naming the key and what is accepted.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "Config", "StudyConfig", "load_config", "quickstart", "build_dataset", "build_model",
           "from_params", "scaled_widths", "build", "data_of"]


class ConfigError(ValueError):
    """A config file has an unknown key or a bad value."""


@dataclass
class DataConfig:
    name: str = "digits"
    image_size: int = 16
    root: str = "data"
    path: str = ""
    augment: bool = False


@dataclass
class ModelConfig:
    preset: str = "tiny"
    pretrained: str = ""  # a save_pretrained folder or Hub id (e.g. google/ddpm-cifar10-32) as the dense start
    seed: int = 0
    block_out_channels: list = field(default_factory=list)  # the preset's widths per level when empty (tiny: 32, 48, 48)


@dataclass
class TrainConfig:
    # Sized so the quickstart (7 trainings) takes ~15 min on 2 CPU cores (~0.3 s per step at batch 32).
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    ema: bool = True
    checkpoint_every: int = 100


@dataclass
class IMPConfig:
    rounds: int = 3
    prune_per_round: float = 0.5
    rewind: str = "init"
    scope: str = "global"
    allocation: str = "global"
    controls: list = field(default_factory=lambda: ["random_reinit"])
    exclude: list = field(default_factory=list)
    sparsities: list = field(default_factory=list)  # the sparsity after each round, instead of prune_per_round x rounds


@dataclass
class EvalConfig:
    n: int = 1000
    sampler: str = "ddim"
    steps: int = 10
    feature_extractor: str = "auto"
    batch_size: int = 500
    grid: int = 64


@dataclass
class OutputConfig:
    run_dir: str = "runs/quickstart"
    registry: str = "runs/lthdiff.db"


@dataclass
class StudyConfig:
    """``[study]``: a recorded multi-seed study (``lthdiff study run``); see :mod:`lthdiff.study`."""

    name: str = "study"
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    arms: list = field(default_factory=lambda: ["ticket"])
    records: str = ""  # default ./studies/<name>/ under the current directory
    run_root: str = ""  # run folders (resume inside a network); default $XDG_CACHE_HOME/lthdiff/<name>
    rounds_only: list = field(default_factory=list)  # train only these pruned rounds (all when empty)
    control_rounds: list = field(default_factory=list)  # the controls only at these rounds (all when empty)
    masks_from: str = ""  # a recorded study (same seeds) whose ticket masks this one retrains, e.g. longer
    structured_reductions: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of MACs removed (arm "structured")
    structured_importances: list = field(default_factory=lambda: ["magnitude", "taylor"])  # lthdiff.pruners.channels
    threads: int = 1  # torch threads a network
    num_cpus: float = 1.0  # Ray resources a network
    num_gpus: float = 0.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    imp: IMPConfig = field(default_factory=IMPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("data", "name"): ("digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "flowers102", "folder", "synthetic-lung-ct"),
    ("model", "preset"): ("tiny", "mnist32", "small", "ddpm-cifar10"),
    ("imp", "scope"): ("global", "layer"),
    ("imp", "allocation"): ("global", "uniform", "erk", "jiang2023"),
    ("eval", "sampler"): ("ddim", "ddpm"),
    ("eval", "feature_extractor"): ("auto", "inception", "lthdiff-digits", "lthdiff-mnist"),
}
_POSITIVE = {("study", "threads"), ("train", "steps"), ("train", "batch_size"), ("eval", "n"), ("eval", "steps"), ("data", "image_size"),
             ("eval", "batch_size"), ("train", "checkpoint_every")}


def _coerce(section: str, key: str, value: Any, typ: Any) -> Any:
    where = f"[{section}] {key}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    elif typ is list or get_origin(typ) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where} = {value!r} is not accepted; accepted: {', '.join(choices)}")
    if (section, key) in _POSITIVE and value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts, validating every key and value."""
    cfg = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}]; accepted: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
        obj = getattr(cfg, section)
        hints = get_type_hints(type(obj))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown key [{section}] {key}; accepted: {', '.join(hints)}")
            setattr(obj, key, _coerce(section, key, value, hints[key]))
    if not 0 < cfg.imp.prune_per_round < 1:
        raise ConfigError(f"[imp] prune_per_round must be in (0, 1), got {cfg.imp.prune_per_round}")
    from lthdiff.lottery.controls import CONTROLS

    bad = [c for c in cfg.imp.controls if c not in CONTROLS]
    if bad:
        raise ConfigError(f"[imp] controls has {bad}; accepted: {', '.join(CONTROLS)}")
    _check_lists(cfg)
    return cfg


def _check_lists(cfg: Config) -> None:
    """The list-valued keys: element types and ranges (one line naming the key and what is accepted)."""
    sp = cfg.imp.sparsities
    if sp and (any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1 for x in sp)
               or any(b <= a for a, b in zip(sp, sp[1:]))):
        raise ConfigError(f"[imp] sparsities = {sp!r} is not accepted; accepted: increasing numbers in (0, 1)")
    for section, key in (("model", "block_out_channels"), ("study", "seeds"), ("study", "rounds_only"),
                         ("study", "control_rounds")):
        v = getattr(getattr(cfg, section), key)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < (1 if key != "seeds" else 0) for x in v):
            raise ConfigError(f"[{section}] {key} = {v!r} is not accepted; accepted: a list of integers >= "
                              f"{1 if key != 'seeds' else 0}")
    if not cfg.study.seeds:
        raise ConfigError("[study] seeds = [] is not accepted; accepted: a non-empty list of integers >= 0")
    if len(set(cfg.study.seeds)) != len(cfg.study.seeds):
        raise ConfigError(f"[study] seeds = {cfg.study.seeds!r} repeats a seed; accepted: distinct integers >= 0")
    if not all(isinstance(a, str) for a in cfg.study.arms) or not cfg.study.arms:
        raise ConfigError(f"[study] arms = {cfg.study.arms!r} is not accepted; accepted: a non-empty list of names")
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.study.name):
        raise ConfigError(f"[study] name = {cfg.study.name!r} is not accepted; accepted: letters, digits, '_', '.', "
                          "'-' (it names a folder)")


# Configs shipped with the package: `lthdiff run mnist` (or configs/mnist.toml) works after pip install.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def config_path(path: str | Path) -> Path:
    """``path`` if it exists, else the shipped config of that name (``"mnist"``, ``"configs/mnist.toml"``)."""
    path = Path(path)
    if path.exists():
        return path
    known = path.suffix in (".toml", ".json", ".yaml", ".yml")  # a name may hold a dot: quality_digits_width_0.5x
    shipped = CONFIGS_DIR / (path.name if known else f"{path.name}.toml")
    return shipped if shipped.exists() else path


def load_config(path: str | Path) -> Config:
    """Read a ``.toml``, ``.json`` or ``.yaml`` config file (or a shipped config by name, see :func:`config_path`)."""
    path = config_path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    elif path.suffix == ".json":
        raw = json.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("YAML configs need PyYAML (pip install pyyaml); TOML needs nothing") from exc
        raw = yaml.safe_load(text)
    else:
        raise ConfigError(f"unknown config format {path.suffix!r}; accepted: .toml, .json, .yaml")
    return from_dict(raw)


def quickstart(quick: bool = False) -> Config:
    """The built-in experiment of ``lthdiff run``: digits, tiny UNet, 3 IMP rounds at 50%/round."""
    cfg = Config()
    if quick:
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 40, 32, 20
        cfg.imp.rounds = 2
        cfg.eval.n, cfg.eval.steps, cfg.eval.grid = 200, 10, 16
        cfg.output.run_dir = "runs/quickstart-quick"
    return cfg


def build_dataset(cfg: Config, split: str = "train"):
    """The training (or test) dataset a config describes."""
    from lthdiff.data.datasets import load_dataset

    return load_dataset(cfg.data.name, image_size=cfg.data.image_size, split=split, root=cfg.data.root,
                        augment=cfg.data.augment and split == "train", path=cfg.data.path or None)


def build_model(cfg: Config, channels: int, seed: int | None = None):
    """The dense UNet a config describes: a preset (widths from ``[model] block_out_channels`` when set, initialised
    from ``seed``, default ``[model] seed``), or a pretrained diffusers UNet."""
    from lthdiff.models.unets import from_pretrained, unet

    if cfg.model.pretrained:
        return from_pretrained(cfg.model.pretrained)
    over = {"block_out_channels": tuple(cfg.model.block_out_channels)} if cfg.model.block_out_channels else {}
    return unet(cfg.model.preset, sample_size=cfg.data.image_size, in_channels=channels, out_channels=channels,
                seed=cfg.model.seed if seed is None else seed, **over)


def scaled_widths(preset: str, width: float) -> list[int]:
    """The preset's ``block_out_channels`` times ``width``, each rounded to the UNet's GroupNorm group (8 channels
    for the tiny UNet; 0.5: 32, 48, 48 become 16, 24, 24); empty (the preset itself) at width 1."""
    from lthdiff.models.unets import PRESETS

    if not (isinstance(width, (int, float)) and width > 0):
        raise ConfigError(f"width = {width!r} is not accepted; accepted: a number > 0 (1: the preset's channels)")
    if width == 1:
        return []
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r} has no widths to scale; accepted: {', '.join(PRESETS)}")
    group = PRESETS[preset].get("norm_num_groups", 8)
    return [max(group, int(round(c * width / group)) * group) for c in PRESETS[preset]["block_out_channels"]]


def from_params(dataset: str = "digits", image_size: int = 16, preset: str = "tiny", pretrained: str | None = None,
                width: float = 1.0, seed: int | None = None, base: Config | None = None) -> Config:
    """A config from a notebook's parameter cell: the data (``dataset`` at ``image_size`` px) and the dense model
    (``preset`` with its channels times ``width``, or a ``pretrained`` diffusers folder / Hub id, which then sets
    the architecture), checked as a config file's values are; the rest (and ``pretrained``, ``seed`` when None)
    from ``base`` (default ones)."""
    cfg = Config() if base is None else base
    cfg.data.name, cfg.data.image_size, cfg.model.preset = dataset, image_size, preset
    if pretrained is not None:
        cfg.model.pretrained = pretrained
    if seed is not None:
        cfg.model.seed = seed
    cfg.model.block_out_channels = [] if cfg.model.pretrained else scaled_widths(preset, width)
    from_dict(cfg.to_dict())  # every value checked as a config file's would be
    return cfg


def build(cfg: Config, seed: int | None = None):
    """``(dataset, model)``: the training split and the dense UNet (initialised from ``seed``) a config describes."""
    ds = build_dataset(cfg)
    return ds, build_model(cfg, ds[0].shape[0], seed=seed)


def data_of(model_dir: str | Path, default: Config | None = None) -> Config:
    """``default`` (a fresh config when None) with the ``[data]`` section recorded beside a model saved with
    ``models.save_model(..., data=cfg.to_dict()["data"])``; unchanged when the folder records none."""
    cfg = Config() if default is None else default
    path = Path(model_dir) / "lthdiff_data.json"
    if path.exists():
        for k, v in json.loads(path.read_text()).items():
            if k in DataConfig.__dataclass_fields__:
                setattr(cfg.data, k, v)
    return cfg
