"""SyntheticLungCT: deterministic, cached, anatomically plausible, and trainable end to end."""
import numpy as np
import pytest
import torch

from lthdiff.data import lung_ct as L
from lthdiff.data import load_dataset


def test_same_seed_same_slices_and_prefix_stable():
    a, ya = L.generate(6, 32, seed=5)
    b, yb = L.generate(6, 32, seed=5)
    c, _ = L.generate(3, 32, seed=5)
    d, _ = L.generate(6, 32, seed=6)
    assert torch.equal(a, b) and torch.equal(ya, yb) and torch.equal(a[:3], c)
    assert not torch.equal(a, d)
    assert a.shape == (6, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert set(ya.tolist()) <= {0, 1, 2, 3}


def test_images_are_chest_slices_not_noise():
    x, _ = L.generate(8, 32, seed=0)
    for i in range(8):
        hu, _ = L.phantom(32, np.random.default_rng([0, 0, i]))
        img = x[i, 0].numpy()
        lung, body = (hu > -900) & (hu < -800), hu >= 0
        assert lung.sum() > 20 and body.sum() > 100
        assert img[lung].mean() < img[body].mean() - 0.5  # lungs far darker than soft tissue
        assert np.corrcoef(img.ravel(), L._window(hu).ravel())[0, 1] > 0.8  # the scan shows the phantom


def test_load_dataset_caches_atomically(tmp_path):
    ds = load_dataset("synthetic-lung-ct", image_size=32, n=12, root=tmp_path)
    files = list((tmp_path / "synthetic-lung-ct").iterdir())
    assert len(ds) == 12 and ds[0].shape == (1, 32, 32) and len(files) == 1 and files[0].suffix == ".pt"
    again = load_dataset("synthetic-lung-ct", image_size=32, n=12, root=tmp_path)
    assert torch.equal(ds.tensors, again.tensors)
    test = load_dataset("synthetic-lung-ct", image_size=32, n=4, split="test", root=tmp_path, labels=True)
    assert not torch.equal(test[0][0], ds[0]) and int(test[0][1]) in range(4)
    with pytest.raises(ValueError, match="image_size must be an int >= 16"):
        L.generate(2, 8)


def test_config_trains_end_to_end_in_quick_mode(tmp_path, monkeypatch):
    """The repo config through the whole pipeline, shrunk below `--quick` to fit a unit test on a shared
    2-core machine (one pruning round, no control, 10 steps of batch 8, 32 samples)."""
    from pathlib import Path

    from lthdiff.config import load_config
    from lthdiff.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "synthetic_lung_ct.toml")
    cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 10, 8, 10
    cfg.imp.rounds, cfg.imp.controls = 1, []
    cfg.eval.n, cfg.eval.steps, cfg.eval.grid = 32, 5, 16
    cfg.output.run_dir, cfg.output.registry = str(tmp_path / "run"), ""
    out = run_pipeline(cfg, progress=False)
    assert [r["round"] for r in out["rows"]] == [0, 1] and all(r["fid"] >= 0 for r in out["rows"])
    assert out["report"].exists() and list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    pair = out["rows"][1]
    assert -1 <= pair["ssim"] <= 1 and pair["perceptual"] >= 0 and pair["perceptual_kind"]
