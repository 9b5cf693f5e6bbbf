"""A study's spec: the shipped configs give the recorded settings; bad input is one line, exit 2, nothing written."""
import hashlib
import json
import os
from pathlib import Path

import pytest

from lthdiff.config import ConfigError
from lthdiff.study import RECORDED, load_spec, records as R

from tiny_study import write_config


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDED.iterdir() if p.is_dir()))
def test_shipped_config_of_each_recorded_study_gives_its_recorded_settings(name):
    """Read independently from the records: every seed's settings.json equals the spec of the shipped config."""
    spec = load_spec(name)
    for d in sorted((RECORDED / name).glob("seed_*")):
        recorded = json.loads((d / "settings.json").read_text())
        assert {k: v for k, v in recorded.items() if k not in ("seed", "init_digest")} == spec.settings, d
        assert recorded["seed"] in spec.seeds


def test_records_default_to_studies_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_config(tmp_path / "c.toml", name="mine"))
    assert spec.dir == tmp_path / "studies" / "mine"
    assert RECORDED not in spec.dir.parents


def test_a_recorded_study_continues_in_a_copy_in_the_users_folder(tmp_path):
    from lthdiff.study import prepare_records

    spec = load_spec("quality_digits_T4000", records=tmp_path / "mine")
    before = _tree_digest(RECORDED / "quality_digits_T4000")
    prepare_records(spec)
    assert _tree_digest(spec.dir) == before  # every file, masks included
    assert _tree_digest(RECORDED / "quality_digits_T4000") == before  # the shipped one untouched


@pytest.mark.parametrize("kw, extra, says", [
    ({"arms": ("ticket", "lottery")}, "", "[study] arms has unknown 'lottery'; accepted: ticket, continue, late"),
    ({"arms": ("late",)}, "", "lacks 'ticket'"),
    ({"seeds": (0, 0)}, "", "repeats a seed"),
    ({"colour": 3}, "", "unknown key [study] colour"),
    ({"name": "../up"}, "", "[study] name = '../up' is not accepted"),
    ({"controls": ("one_shot",)}, "", "[imp] controls has 'one_shot', not accepted in a study"),
    ({}, "[model]\nblock_out_channels = [16, -24]\n", "[model] block_out_channels = [16, -24] is not accepted"),
    ({"steps": 0}, "", "[train] steps must be > 0"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, study_cli, kw, extra, says):
    cfg = write_config(tmp_path / "c.toml", **kw)
    cfg.write_text(cfg.read_text() + extra)
    assert study_cli("run", cfg, "--records", tmp_path / "rec", "--run-root", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "rec").exists() and not (tmp_path / "runs").exists()


def test_records_of_other_settings_or_a_foreign_folder_are_refused_and_untouched(tmp_path, capsys, study_cli):
    rec = tmp_path / "rec" / "s" / "seed_3"
    settings = {**load_spec(write_config(tmp_path / "c.toml")).settings, "seed": 3, "init_digest": "x"}
    R.write_settings(rec, {**settings, "steps": 999})
    R.write_network(rec, {"round": 0, "variant": "ticket", "fid": 1.0})
    before = _tree_digest(tmp_path / "rec")
    assert study_cli("run", tmp_path / "c.toml", "--records", tmp_path / "rec", "--run-root", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert "steps: recorded 999, this config 20" in err and "nothing was written" in err
    assert _tree_digest(tmp_path / "rec") == before and not (tmp_path / "runs").exists()
    (tmp_path / "other" / "s").mkdir(parents=True)
    (tmp_path / "other" / "s" / "notes.txt").write_text("mine")
    assert study_cli("run", tmp_path / "c.toml", "--records", tmp_path / "other", "--run-root", tmp_path / "runs") == 2
    assert "not a study's records" in capsys.readouterr().err
    assert os.listdir(tmp_path / "other" / "s") == ["notes.txt"]
    with pytest.raises(ConfigError, match="unknown"):
        load_spec(write_config(tmp_path / "d.toml", arms=("tickets",)))


@pytest.mark.parametrize("dataset, size, want", [("digits", 16, "lthdiff-digits"), ("mnist5k", 32, "lthdiff-mnist"),
                                                 ("cifar10", 32, "inception")])
def test_auto_extractor_is_fixed_by_dataset_not_by_what_is_reachable(tmp_path, dataset, size, want):
    """A study's extractor is a setting: "auto" resolves by dataset, the same offline and on Colab."""
    cfg = write_config(tmp_path / "c.toml")
    cfg.write_text(cfg.read_text().replace('feature_extractor = "lthdiff-digits"', 'feature_extractor = "auto"')
                   + f'[data]\nname = "{dataset}"\nimage_size = {size}\n')
    assert load_spec(cfg).settings["extractor"] == want
