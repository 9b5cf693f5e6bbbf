"""The offline MNIST feature extractor "lthdiff-mnist" (trained on mnist5k/train)."""
import pytest
import torch

from lthdiff.data import load_dataset, to_uint8
from lthdiff.evaluation import evaluate, fid, resolve_extractor
from lthdiff.evaluation.metrics import mnist_extractor as M

MNIST = "lthdiff-mnist"


def test_is_an_accurate_mnist_classifier_on_the_held_out_split():
    net = M.load_net()
    te = load_dataset("mnist5k", image_size=28, split="test")
    acc = float((net(te.tensors).argmax(1) == te.labels).float().mean())
    assert acc >= 0.98
    from lthdiff.store import load_tensors

    _, meta = load_tensors(M.weights_path())
    assert meta["test_accuracy"] == pytest.approx(acc, abs=1e-6)  # the recorded number is the measured one
    tr = load_dataset("mnist5k", image_size=28, split="train").tensors
    assert net.features(tr).pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)


def test_one_weights_copy_in_the_package():
    from pathlib import Path

    assert M.weights_path().parent == Path(M.__file__).parent
    repo_data = Path(M.__file__).resolve().parents[2] / "data"
    assert not list(repo_data.glob("mnist_extractor*"))


def test_32px_input_is_the_28px_digit():
    x28 = to_uint8(load_dataset("mnist5k", image_size=28, split="test").tensors[:16])
    x32 = to_uint8(load_dataset("mnist5k", image_size=32, split="test").tensors[:16])
    assert torch.equal(M.to_input(x32), M.to_input(x28))
    assert torch.allclose(M.to_input(x28.expand(-1, 3, -1, -1)), M.to_input(x28), atol=1e-5)
    assert M.to_input(torch.zeros(2, 1, 16, 16, dtype=torch.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="uint8"):
        M.to_input(x28.float())


def test_auto_picks_the_extractor_that_fits_the_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("LTHDIFF_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LTHDIFF_INCEPTION_WEIGHTS", raising=False)
    assert resolve_extractor("auto", 1, reference="mnist5k") == MNIST
    assert resolve_extractor("auto", 1, reference="digits") == "lthdiff-digits"
    assert resolve_extractor("auto", 1) == "lthdiff-digits"
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    # grayscale MNIST keeps its domain extractor even where Inception is reachable; RGB gets Inception
    assert resolve_extractor("auto", 1, weights_path=weights, reference="mnist5k") == MNIST
    assert resolve_extractor("auto", 3, weights_path=weights, reference="mnist5k") == "inception-v3-compat"


def test_fid_real_train_vs_test_is_far_below_noise(tmp_path):
    # random subsets as an independent check (mnist5k now comes shuffled, but the test does not rely on it)
    g = torch.Generator().manual_seed(0)
    train = to_uint8(load_dataset("mnist5k", image_size=32, split="train").tensors[torch.randperm(4000, generator=g)[:300]])
    test = to_uint8(load_dataset("mnist5k", image_size=32, split="test").tensors[torch.randperm(1000, generator=g)[:300]])
    noise = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    real = evaluate(train, test, metrics=("fid", "kid"), feature_extractor=MNIST, cache_dir=None)
    far = evaluate(noise, test, metrics=("fid", "kid"), feature_extractor=MNIST, cache_dir=None)
    assert real.extractor == far.extractor == MNIST
    assert far.fid > 20 * real.fid > 0
    assert far.kid > real.kid + 10 * real.metrics["kid_std"]
    by_name = fid(test, "mnist5k", reference_n=500, cache_dir=tmp_path, progress=False)
    assert by_name.extractor == MNIST and by_name.reference == "mnist5k/train/32px"
    assert 0 < by_name.fid < far.fid / 20


def test_registration_is_idempotent():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert M.register() == MNIST and M.register() == MNIST
    assert FEATURE_EXTRACTORS_REGISTRY[MNIST] is M.MnistFeatureExtractor


def test_a_tensor_or_dataset_reference_with_reference_n_is_a_seeded_random_subset(tmp_path):
    """reference_n picks a random subset (fixed seed), never the first n images: on images sorted by
    class the first 300 are three digits, and their FID against a mixed sample would be huge."""
    from lthdiff.data import TensorImageDataset
    from lthdiff.evaluation.metrics.fidelity import _subset

    ds = load_dataset("mnist5k", image_size=32, split="train", labels=True)
    order = torch.argsort(torch.stack([ds[i][1] for i in range(len(ds))]), stable=True)
    sorted_x = load_dataset("mnist5k", image_size=32, split="train").tensors[order]  # the class-sorted worst case
    test = to_uint8(load_dataset("mnist5k", image_size=32, split="test").tensors[:300])
    kw = dict(metrics=("fid",), feature_extractor=MNIST, cache_dir=None, progress=False)
    by_tensor = evaluate(test, to_uint8(sorted_x), reference_n=300, **kw)
    by_dataset = evaluate(test, TensorImageDataset(sorted_x, name="sorted"), reference_n=300, **kw)
    first = evaluate(test, to_uint8(sorted_x[:300]), **kw)  # what "the first n" would give
    assert by_tensor.fid == pytest.approx(by_dataset.fid, rel=1e-6)  # the same subset either way
    assert by_tensor.fid < first.fid / 5
    idx = _subset(4000, 300)
    assert torch.equal(idx, _subset(4000, 300)) and len(set(idx.tolist())) == 300  # seeded, no repeats
    assert not torch.equal(idx, torch.arange(300)) and _subset(4000, None) is None
