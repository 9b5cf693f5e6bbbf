import pytest
import torch

from lthdiff.data import DATASETS, load_dataset, to_uint8


def test_digits_shape_range_and_split():
    train = load_dataset("digits", image_size=16, split="train")
    test = load_dataset("digits", image_size=16, split="test")
    assert len(train) + len(test) == 1797
    assert train[0].shape == (1, 16, 16)
    assert train.tensors.min() >= -1 and train.tensors.max() <= 1
    assert train.tensors.min() == -1 and train.tensors.max() == 1  # full range used
    # deterministic and disjoint split
    again = load_dataset("digits", split="train")
    assert torch.equal(train.tensors, again.tensors)
    rows = {tuple(x.flatten().tolist()) for x in test.tensors}
    assert sum(tuple(x.flatten().tolist()) in rows for x in train.tensors[:200]) < 5  # duplicates are rare


def test_digits_other_size_and_labels():
    ds = load_dataset("digits", image_size=32, labels=True)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and 0 <= int(y) <= 9


def test_unknown_dataset_lists_accepted():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)


def test_bad_split_and_size():
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=2)


def test_missing_torchvision_dataset_says_where(tmp_path, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(RuntimeError) as e:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path) in str(e.value) and "MNIST" in str(e.value)


def test_folder_dataset(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 24), (i * 50, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    ds = load_dataset("folder", image_size=16, path=str(tmp_path), augment=True)
    assert len(ds) == 3 and ds[0].shape == (3, 16, 16)
    (tmp_path / "b").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "b" / "0.png")
    x, y = load_dataset("folder", image_size=16, path=str(tmp_path), labels=True)[3]
    assert x.shape == (3, 16, 16) and y == 1  # the class index of folder "b"
    with pytest.raises(ValueError, match="path="):
        load_dataset("folder")


def test_to_uint8_endpoints():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 128, 255, 255]
