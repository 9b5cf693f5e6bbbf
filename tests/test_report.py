"""Reports from a tiny fabricated IMP run directory (no training): HTML, Markdown, registry, CLI, Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lthdiff import masks as M
from lthdiff.store import write_json
from lthdiff.tracking import Registry
from lthdiff.reporting import block_sparsity, build, main, screenshot

SPARSITY = [0.0, 0.2, 0.36]
CONTROLS = ("random_reinit", "random_mask")


def _round_dir(d: Path, r: int, mask: dict, loss_scale: float, gen: torch.Generator, extra: dict) -> None:
    M.save(d / "mask.safetensors", mask, metadata={"round": r})
    losses = (loss_scale * (1 + torch.rand(40, generator=gen))).tolist()
    write_json(d / "losses.json", losses)
    rep = M.report(mask, by="layer")
    write_json(d / "summary.json", {"round": r, "sparsity": M.sparsity(mask), "final_loss": sum(losses[-5:]) / 5,
                                    "seconds": 1.0, "steps": 40,
                                    "layer_sparsity": dict(zip(rep["layer"], rep["sparsity"])), **extra})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Three rounds of a tiny UNet: random masks at 0/20/36 % sparsity, two controls, metrics in both
    accepted formats, sample grids for the tickets only, and an efficiency.json."""
    from lthdiff.models import unet
    from lthdiff.evaluation import image_grid

    run = tmp_path_factory.mktemp("run")
    model = unet("tiny")
    gen = torch.Generator().manual_seed(0)
    write_json(run / "config.json", {"method": "imp", "rounds": 2, "rewind": "init", "seed": 0,
                                     "model_config": dict(model.config), "dataset": "digits"})
    params = dict(model.named_parameters())
    for r, s in enumerate(SPARSITY):
        d = run / f"round_{r:02d}"
        mask = {n: torch.rand(params[n].shape, generator=gen) >= s for n in M.prunable(model)}
        _round_dir(d, r, mask, 1.0 / (r + 1), gen, {"target_sparsity": s})
        write_json(d / "metrics.json", {"metrics": {"fid": 50.0 - 10 * r, "kid": 0.05, "kid_std": 0.01,
                                                    "precision": 0.5}, "extractor": "digits-cnn",
                                        "settings": {"n": 16}})
        images = torch.randint(0, 256, (16, 1, 16, 16), generator=gen, dtype=torch.uint8)
        image_grid(images, scale=2).save(d / "samples.png")
        if r:
            for i, c in enumerate(CONTROLS):
                cmask = {n: torch.rand(m.shape, generator=gen) >= s for n, m in mask.items()}
                _round_dir(d / "controls" / c, r, cmask, 2.0, gen, {"variant": c})
            write_json(d / "controls" / "random_reinit" / "metrics.json", {"fid": 90.0 + r})  # flat format
    write_json(run / "efficiency.json", {"rows": [{"round": r, "sparsity": s, "params_nonzero": 700_000 * (1 - s)}
                                                  for r, s in enumerate(SPARSITY)]})
    return run


def _markdown_section(md: str, heading: str) -> list[str]:
    lines = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    return [ln for ln in lines if ln.startswith("|")]


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    return build(run_dir, out_dir=tmp_path_factory.mktemp("rep"))


def test_report_html_and_markdown(run_dir, report):
    paths = report
    assert paths.html.name == "report.html" and paths.markdown.exists()
    page = paths.html.read_text()
    # self-contained: no external resources, every image inline and a valid PNG
    assert not re.search(r'(src|href)="(https?:|//|file:)', page) and "<script" not in page
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 1 + 1 + 1 + 2 + 3  # verdict, metric curves, block heatmap, two loss plots, 3 sample grids
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert 'class="results"' in page and "FID (random_reinit)" in page and "Efficiency" in page
    # the answer first: the verdict is the first section, its table the first table on the page
    assert re.findall(r"<h2>([^<]+)</h2>", page)[0] == "Verdict"
    assert page.index('class="headline"') < page.index('class="results"')
    # KID's subset std is not a result, and precision/recall on 16 samples would be noise
    assert "kid_std" not in page and "KID std" not in page and "precision" not in page.split("left out")[1]
    assert "precision/recall/F-score left out: 16 samples per network" in page

    md = paths.markdown.read_text()
    results = _markdown_section(md, "Details: every metric")
    header = [c.strip() for c in results[0].strip("|").split("|")]
    assert header[:2] == ["round", "sparsity"]
    for col in ["final loss (ticket)", "final loss (random_reinit)", "final loss (random_mask)", "FID (ticket)",
                "FID (random_reinit)", "KID (ticket)"]:
        assert col in header
    rows = results[2:]
    assert len(rows) == len(SPARSITY)  # a row per round
    for r, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        s = json.loads((run_dir / f"round_{r:02d}" / "summary.json").read_text())
        assert cells[0] == str(r) and cells[1] == f"{100 * s['sparsity']:.1f}%"
        assert float(cells[header.index("final loss (ticket)")]) == pytest.approx(s["final_loss"], rel=1e-3)
        assert float(cells[header.index("FID (ticket)")]) == 50.0 - 10 * r
        # round 0 has no controls
        assert (cells[header.index("FID (random_reinit)")] == "–") == (r == 0)
    assert len(_markdown_section(md, "Efficiency")) == 2 + len(SPARSITY)
    assert len(_markdown_section(md, "Sparsity per block")) == 2 + len(block_sparsity(run_dir))


def test_block_heatmap_data_matches_masks(run_dir):
    blocks = block_sparsity(run_dir)
    assert list(blocks.columns) == [0, 1, 2]
    # rows follow the UNet's data flow: input side, down, mid, up, output
    names = list(blocks.index)
    assert names[0] in ("time_embedding", "conv_in") and names[-1] == "conv_out"
    assert names.index("mid_block.resnets") < names.index("up_blocks.0.resnets")
    assert names.index("down_blocks.2.resnets") < names.index("mid_block.resnets")
    mask, _ = M.load(run_dir / "round_02" / "mask.safetensors")
    for block, row in M.report(mask, by="block").set_index("block").iterrows():
        assert blocks.loc[block, 2] == pytest.approx(row["sparsity"])
    assert (blocks[0] == 0).all() and blocks[2].mean() > blocks[1].mean() > 0.1


def test_cli_builds_registers_and_rejects_a_non_run(run_dir, tmp_path, capsys):
    db = tmp_path / "reg.db"
    with Registry(db) as reg:
        m = reg.get_or_create_model("UNet2DModel", {"preset": "tiny"})
        d = reg.get_or_create_dataset("digits", image_size=16)
        exp = reg.start_experiment(m, d, "imp", run_dir=run_dir)
    assert main([str(run_dir), "--out-dir", str(tmp_path / "cli"), "--registry", str(db)]) == 0
    out = capsys.readouterr().out
    html_path = tmp_path / "cli" / "report.html"
    assert f"report: {html_path}" in out and (tmp_path / "cli" / "report.md").exists()
    with Registry(db) as reg:
        reports = reg.reports()
    assert len(reports) == 1
    assert reports.loc[0, "path"] == str(html_path.resolve()) and reports.loc[0, "experiment_ids"] == [exp]

    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "lthdiff.reporting.report", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "RUN_DIR" in proc.stdout


def test_report_without_optional_files(run_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("metrics.json", "samples.png", "efficiency.json",
                                                                 "controls"))
    paths = build(bare)
    assert paths.html.parent == bare / "report"
    page, md = paths.html.read_text(), paths.markdown.read_text()
    assert "Efficiency" not in page and "Samples" not in page and "FID (" not in md
    assert len(_markdown_section(md, "Details: every metric")) == 2 + len(SPARSITY)
    assert "final training loss instead of FID" in md  # not evaluated: the verdict says what it ranks by


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="headless Chromium not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    png = screenshot(report.html, tmp_path / "report.png", width=1000, height=1600)
    assert png is not None
    with Image.open(png) as im:
        assert im.size == (1000, 1600)
        # a rendered page is not blank: many distinct colours (text, tables, figures)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_screenshot_without_browser_returns_none(report, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser on an empty PATH
    assert screenshot(report.html, tmp_path / "x.png") is None
    assert "apt-get install chromium" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
