import pytest
import torch

from lthdiff.store import CorruptFileError, atomic_path, load_tensors, read_json, save_tensors, write_json


def test_tensors_round_trip_with_metadata(tmp_path):
    t = {"a": torch.randn(3, 4), "m": torch.rand(5) > 0.5}
    save_tensors(tmp_path / "x.safetensors", t, {"round": 3, "name": "x"})
    back, meta = load_tensors(tmp_path / "x.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["m"], t["m"])
    assert meta == {"round": 3, "name": "x"}


def test_corrupt_file_detected(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.arange(100.0)})
    raw = bytearray(p.read_bytes())
    raw[-8] ^= 0xFF  # flip bits in the payload: still parses, fails the checksum
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        load_tensors(p)
    p.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CorruptFileError, match=str(p.name)):
        load_tensors(p)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "c.json"
    write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert read_json(p) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["c.json"]  # no temporary left behind


def test_truncated_json_is_reported(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('{"a": ')
    with pytest.raises(CorruptFileError, match="s.json"):
        read_json(p)
