"""Quality metrics: FID/KID/PRC through torch-fidelity with the offline digits extractor."""
import importlib

import pytest
import torch

from lthdiff.data import load_dataset, to_uint8
from lthdiff.evaluation import evaluate, fid, kid, reference_key, resolve_extractor
from lthdiff.evaluation import extractor as X

DIGITS = "lthdiff-digits"


@pytest.fixture(scope="module")
def test_images():
    return to_uint8(load_dataset("digits", image_size=16, split="test").tensors[:200])


@pytest.fixture(scope="module")
def noise():
    return torch.randint(0, 256, (200, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fid_cache")


def test_fid_of_a_set_against_itself_is_zero_and_noise_is_far(test_images, noise, cache):
    self_fid = fid(test_images, test_images, feature_extractor=DIGITS, cache_dir=None)
    held_out = evaluate(test_images, "digits", feature_extractor=DIGITS, cache_dir=cache)
    far = evaluate(noise, "digits", feature_extractor=DIGITS, cache_dir=cache)
    assert abs(float(self_fid)) < 1e-6
    assert 0 < held_out.fid and far.fid > 10 * held_out.fid
    assert far.kid > held_out.kid + 10 * held_out.metrics["kid_std"]
    # improved precision/recall: held-out digits lie on the train manifold, noise does not
    assert min(held_out.metrics["precision"], held_out.metrics["recall"]) > 0.5
    assert max(far.metrics["precision"], far.metrics["recall"]) < 0.1
    assert held_out.extractor == DIGITS and held_out.n == 200 and held_out.reference == "digits/train/16px"
    assert held_out.n_reference == len(load_dataset("digits", image_size=16, split="train"))


def test_float_images_in_minus_one_one_match_uint8(test_images, cache):
    as_float = test_images.float() / 127.5 - 1
    a = fid(test_images, "digits", feature_extractor=DIGITS, cache_dir=cache)
    b = fid(as_float, "digits", feature_extractor=DIGITS, cache_dir=cache)
    assert float(a) == pytest.approx(float(b), rel=1e-9)


def test_same_seed_same_scores_and_result_records_settings(micro_unet, cache):
    kw = dict(n=48, steps=2, feature_extractor=DIGITS, cache_dir=cache, progress=False)
    a = evaluate(micro_unet, "digits", seed=3, **kw)
    b = evaluate(micro_unet, "digits", seed=3, **kw)
    c = evaluate(micro_unet, "digits", seed=4, **kw)
    assert a.metrics == b.metrics
    assert a.metrics["fid"] != c.metrics["fid"]
    d = a.to_dict()
    assert (d["n"], d["sampler"], d["steps"], d["seed"], d["extractor"]) == (48, "ddim", 2, 3, DIGITS)
    assert set(d["metrics"]) == {"fid", "kid", "kid_std", "precision", "recall", "f_score"}
    only_kid = kid(micro_unet, "digits", seed=3, **kw)
    assert set(only_kid.metrics) == {"kid", "kid_std"} and only_kid.kid == pytest.approx(a.kid)


def test_reference_keys_differ_when_the_reference_changes():
    base = dict(dataset="digits", split="train", image_size=16, extractor=DIGITS, n=1438, fingerprint="ab")
    variants = [dict(dataset="mnist"), dict(split="test"), dict(image_size=8), dict(extractor="inception-v3-compat"),
                dict(n=1000), dict(fingerprint="cd")]
    keys = {reference_key(**base)} | {reference_key(**{**base, **v}) for v in variants}
    assert len(keys) == 1 + len(variants)
    assert all("/" not in k for k in keys)  # keys are file-name prefixes


def test_cache_is_reused_only_for_the_same_reference(test_images, tmp_path):
    kw = dict(feature_extractor=DIGITS, cache_dir=tmp_path)
    first = fid(test_images, "digits", **kw)
    files = set(tmp_path.iterdir())
    again = fid(test_images, "digits", **kw)
    assert set(tmp_path.iterdir()) == files and float(again) == float(first)  # cache hit, same value
    other_split = fid(test_images, "digits", split="test", **kw)
    subset = fid(test_images, "digits", reference_n=300, **kw)
    tensor_ref = fid(test_images, to_uint8(load_dataset("digits", split="test").tensors), **kw)
    keys = {r.cache_key for r in (first, other_split, subset, tensor_ref)}
    assert len(keys) == 4
    assert len(set(tmp_path.iterdir())) > len(files)
    assert float(other_split) != float(first) and float(subset) != float(first)


def test_offline_auto_uses_the_digits_extractor(monkeypatch, tmp_path, test_images):
    monkeypatch.setenv("LTHDIFF_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached Inception weights there
    monkeypatch.delenv("LTHDIFF_INCEPTION_WEIGHTS", raising=False)
    assert resolve_extractor("auto", channels=1) == DIGITS
    with pytest.raises(RuntimeError, match="Inception-v3 weights"):
        resolve_extractor("auto", channels=3)
    with pytest.raises(RuntimeError, match="feature_extractor_weights_path"):
        resolve_extractor("inception", channels=1)
    with pytest.raises(ValueError, match="accepted: auto, inception, lthdiff-digits"):
        resolve_extractor("incepton", channels=1)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    assert resolve_extractor("auto", channels=3, weights_path=weights) == "inception-v3-compat"
    res = fid(test_images[:64], "digits", feature_extractor="auto", cache_dir=None)
    assert res.extractor == DIGITS


def test_bad_inputs_name_the_problem(test_images):
    with pytest.raises(ValueError, match="accepted: fid, kid, prc"):
        evaluate(test_images, "digits", metrics=("fid", "is"), feature_extractor=DIGITS, cache_dir=None)
    with pytest.raises(ValueError, match="uint8.*float"):
        fid(test_images.int(), "digits", feature_extractor=DIGITS, cache_dir=None)
    small_ref = to_uint8(load_dataset("digits", image_size=8, split="test").tensors)
    with pytest.raises(ValueError, match="differ in shape"):
        fid(test_images, small_ref, feature_extractor=DIGITS, cache_dir=None)
    with pytest.raises(ValueError, match="image_size=8"):
        fid(test_images, "digits", image_size=8, feature_extractor=DIGITS, cache_dir=None)


def test_extractor_is_a_working_digit_classifier_and_copies_match():
    net = X.load_net()
    te = load_dataset("digits", image_size=16, split="test")
    acc = float((net(te.tensors).argmax(1) == te.labels).float().mean())
    assert acc > 0.95
    from lthdiff.store import load_tensors

    repo, _ = load_tensors(X.PACKAGE_WEIGHTS)
    packaged, _ = load_tensors(X.PACKAGE_WEIGHTS)
    assert repo.keys() == packaged.keys() and all(torch.equal(repo[k], packaged[k]) for k in repo)
    # features have unit mean square on the train split (KID's kernel is scale-sensitive)
    tr = load_dataset("digits", image_size=16, split="train").tensors
    assert net.features(tr).pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)


def test_extractor_accepts_rgb_and_other_sizes(test_images):
    gray = X.to_input(test_images[:8])
    assert torch.allclose(X.to_input(test_images[:8].expand(-1, 3, -1, -1)), gray, atol=1e-5)
    assert X.to_input(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        X.to_input(test_images.float())


def test_extractor_registration_is_idempotent(monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert X.register() == DIGITS and X.register() == DIGITS
    assert FEATURE_EXTRACTORS_REGISTRY[DIGITS] is X.DigitsFeatureExtractor
    # a re-run notebook cell after importlib.reload: the new class replaces the stale one
    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, DIGITS,
                        type("DigitsFeatureExtractor", (X.DigitsFeatureExtractor,), {"__module__": X.__name__}))
    X.register()
    assert FEATURE_EXTRACTORS_REGISTRY[DIGITS] is X.DigitsFeatureExtractor
    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, DIGITS, FeatureExtractorInceptionV3)
    with pytest.raises(ValueError, match="already has a feature extractor"):
        X.register()


def test_reloaded_extractor_module_still_computes(test_images):
    mod = importlib.reload(X)
    mod.register()
    assert float(fid(test_images, test_images, feature_extractor=DIGITS, cache_dir=None)) < 1e-6


@pytest.mark.slow
def test_extractor_training_is_deterministic():
    from lthdiff.evaluation.metrics.train_extractor import train

    a, sa = train(epochs=1, progress=False)
    b, sb = train(epochs=1, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sa["test_accuracy"] == sb["test_accuracy"] > 0.2  # chance is 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(test_images):
    cpu = evaluate(test_images, "digits", feature_extractor=DIGITS, cache_dir=None, cuda=False)
    gpu = evaluate(test_images, "digits", feature_extractor=DIGITS, cache_dir=None, cuda=True)
    for k, v in cpu.metrics.items():
        assert gpu.metrics[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
