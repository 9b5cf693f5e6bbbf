"""Every score lands under its own key, from the right split; memorisation rises when training images are copied."""
import pytest
import torch

from lthdiff.data import load_dataset
from lthdiff.data.datasets import as_tensor
from lthdiff.evaluation.memorisation import COPY_FRACTION, memorisation, nearest_distances


def _uint8(ds):
    return ((as_tensor(ds) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_each_row_field_holds_its_own_metric_and_split(tmp_path, monkeypatch):
    """A scorer stub whose results differ by metric and by split: the row must hold each under its own key."""
    import lthdiff.evaluation.metrics as metrics
    from lthdiff.study import load_spec
    from lthdiff.study.engine import SeedContext, score
    from tiny_study import write_config

    seen = []

    class Res:
        def __init__(self, split):
            self.metrics = {"fid": {"train": 11.0, "test": 22.0}[split], "kid": {"train": 0.33, "test": 0.44}[split]}

    def stub(images, reference, *, split, metrics, **kw):
        seen.append((reference, split, tuple(metrics), kw["feature_extractor"]))
        return Res(split)

    monkeypatch.setattr(metrics, "evaluate", stub)
    spec = load_spec(write_config(tmp_path / "c.toml", n=4), records=tmp_path / "rec", run_root=tmp_path / "runs")
    ctx = SeedContext(spec.config, spec.settings, 3, *spec.seed_dirs(3))
    out = score(ctx, ctx.theta0)
    assert (out["fid"], out["kid"], out["fid_test"], out["kid_test"]) == (11.0, 0.33, 22.0, 0.44)
    assert sorted(s[1] for s in seen) == ["test", "train"] and all(s[0] == "digits" for s in seen)
    assert all(s[3] == "lthdiff-digits" for s in seen)  # the recorded extractor, not "auto"
    assert set(out["memorisation"]) >= {"pixels", "features", "copy_fraction"}


def test_train_and_test_scores_differ_on_a_model_that_memorises():
    """Samples that *are* training images: FID against the train split falls far below FID against the test split."""
    from lthdiff.evaluation.metrics import evaluate

    train = _uint8(load_dataset("digits", image_size=16))
    copies = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:300]]
    test = _uint8(load_dataset("digits", image_size=16, split="test"))
    held = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:300]]
    kw = dict(image_size=16, feature_extractor="lthdiff-digits", metrics=("fid",), seed=0, progress=False, cache_dir=None)
    fid = {(what, split): evaluate(x, "digits", split=split, **kw).metrics["fid"]
           for what, x in (("train copies", copies), ("test copies", held)) for split in ("train", "test")}
    # each set of copies is closest to the split it was copied from (a swapped split fails both)
    assert fid[("train copies", "train")] < 0.7 * fid[("train copies", "test")]
    assert fid[("test copies", "test")] < 0.7 * fid[("test copies", "train")]


def test_copy_rate_rises_when_training_images_are_planted_among_the_samples():
    train = _uint8(load_dataset("digits", image_size=16))
    test = _uint8(load_dataset("digits", image_size=16, split="test"))
    g = torch.Generator().manual_seed(1)
    novel = test[:200]  # stand-ins for new samples of the same data: the held-out digits themselves
    planted = torch.cat([novel[:100], train[torch.randperm(len(train), generator=g)[:100]]])
    a = memorisation(novel, train, test[200:])
    b = memorisation(planted, train, test[200:])
    for space in ("pixels",):
        assert b[space]["copy_rate"] >= a[space]["copy_rate"] + 0.45  # half the samples are exact copies
        assert b[space]["closer_than_test"] >= 0.5 > a[space]["closer_than_test"] + 0.2
    assert b["copy_fraction"] == COPY_FRACTION


def test_nearest_distances_against_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.rand(7, 5, generator=g), torch.rand(11, 5, generator=g)
    want = torch.tensor([min(float(((x - y) ** 2).sum().sqrt()) for y in bank) for x in q])
    assert torch.allclose(nearest_distances(q, bank, chunk=3), want, atol=1e-6)


def test_paired_image_metrics_against_hand_values_and_scikit_image():
    """PSNR of images 0.1 apart everywhere in [0, 1] is 20 dB exactly; SSIM agrees with scikit-image's."""
    from skimage.metrics import structural_similarity

    from lthdiff.evaluation.metrics.paired_fidelity import paired_images

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 16, 16, generator=g) * 0.8  # in [0, 0.8], so + 0.1 stays inside [0, 1]
    b = a + 0.1
    to_pm1 = lambda x: x * 2 - 1  # noqa: E731  (paired_images takes floats in [-1, 1])
    out = paired_images(to_pm1(a), to_pm1(b), perceptual="lthdiff-digits-layers")
    assert out["psnr"] == pytest.approx(20.0, abs=1e-3)
    c = (a + 0.3 * torch.rand(a.shape, generator=g)).clamp(0, 1)
    ours = paired_images(to_pm1(a), to_pm1(c), perceptual="lthdiff-digits-layers")["ssim"]
    theirs = sum(structural_similarity(c[i, 0].double().numpy(), a[i, 0].double().numpy(), data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=11)
                 for i in range(3)) / 3
    assert ours == pytest.approx(theirs, abs=0.02)
