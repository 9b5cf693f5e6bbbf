import math

import pytest
import torch

from lthdiff.data import TensorImageDataset
from lthdiff.store import CorruptFileError
from lthdiff.training import load_checkpoint, train


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_loss_decreases_and_history(micro_unet, small_digits):
    res = train(micro_unet, small_digits, 30, batch_size=16, progress=False)
    assert len(res.losses) == 30 and res.steps == 30
    assert sum(res.losses[-5:]) / 5 < sum(res.losses[:5]) / 5
    assert res.ema is not None and res.sampling_model is res.ema


def test_same_seed_same_weights(small_digits):
    from lthdiff.models import unet

    kw = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
    a = train(unet("tiny", **kw), small_digits, 4, batch_size=16, progress=False)
    b = train(unet("tiny", **kw), small_digits, 4, batch_size=16, progress=False)
    c = train(unet("tiny", **kw), small_digits, 4, batch_size=16, seed=1, progress=False)
    assert _same(_state(a.model), _state(b.model)) and a.losses == b.losses
    assert not _same(_state(a.model), _state(c.model))


def test_resume_equals_uninterrupted(tmp_path, small_digits):
    """Stop after 3 steps (a checkpoint), resume to 7: identical to 7 straight steps, EMA included."""
    from lthdiff.models import unet

    kw = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
    straight = train(unet("tiny", **kw), small_digits, 7, batch_size=16, progress=False)
    first = train(unet("tiny", **kw), small_digits, 3, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    assert first.steps == 3
    # a fresh model object, as after a crash: everything must come from the checkpoint
    resumed = train(unet("tiny", seed=123, **kw), small_digits, 7, batch_size=16, checkpoint_dir=tmp_path,
                    progress=False)
    assert resumed.resumed_from == 3
    assert resumed.losses == straight.losses
    assert _same(_state(resumed.model), _state(straight.model))
    assert _same(_state(resumed.ema), _state(straight.ema))
    # a completed run returns at once with the same weights
    again = train(unet("tiny", **kw), small_digits, 7, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from == 7 and _same(_state(again.model), _state(straight.model))


def test_resume_with_other_arguments_is_refused(tmp_path, micro_unet, small_digits):
    train(micro_unet, small_digits, 2, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(micro_unet, small_digits, 4, batch_size=8, checkpoint_dir=tmp_path, progress=False)


def test_corrupt_checkpoint_names_file_and_latest_good(tmp_path, micro_unet, small_digits):
    train(micro_unet, small_digits, 4, batch_size=16, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    latest = tmp_path / "ckpt-0000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a disk-full kill
    with pytest.raises(CorruptFileError) as e:
        load_checkpoint(tmp_path)
    assert "ckpt-0000004.pt" in str(e.value) and "ckpt-0000002.pt" in str(e.value)


def test_mask_keeps_pruned_weights_zero(micro_unet, small_digits):
    name, p = next((n, p) for n, p in micro_unet.named_parameters() if p.ndim == 4)
    mask = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) > 0.7}
    res = train(micro_unet, small_digits, 5, batch_size=16, mask=mask, progress=False)
    for model in (res.model, res.ema):
        w = dict(model.named_parameters())[name]
        assert torch.all(w[~mask[name]] == 0)
        assert torch.count_nonzero(w[mask[name]]) == mask[name].sum()


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(micro_unet, small_digits, steps):
    with pytest.raises(ValueError, match="steps"):
        train(micro_unet, small_digits, steps, progress=False)


def test_empty_dataset_and_wrong_size(micro_unet):
    with pytest.raises(ValueError, match="empty"):
        train(micro_unet, TensorImageDataset(torch.zeros(0, 1, 16, 16)), 2, progress=False)
    with pytest.raises(ValueError, match=r"sample_size=16"):
        train(micro_unet, TensorImageDataset(torch.zeros(4, 1, 32, 32)), 2, progress=False)


def test_nan_loss_is_reported(micro_unet):
    ds = TensorImageDataset(torch.full((8, 1, 16, 16), float("nan")))
    with pytest.raises(FloatingPointError, match="step 0"):
        train(micro_unet, ds, 2, batch_size=4, progress=False)


def test_bad_mask_key(micro_unet, small_digits):
    with pytest.raises(ValueError, match="nope.weight"):
        train(micro_unet, small_digits, 1, mask={"nope.weight": torch.ones(3, dtype=torch.bool)}, progress=False)


def test_tensorboard_scalars(tmp_path, micro_unet, small_digits):
    train(micro_unet, small_digits, 3, batch_size=16, log_dir=tmp_path, progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


def test_resume_with_a_different_mask_is_refused(tmp_path, small_digits):
    from lthdiff.models import unet
    from lthdiff.pruners import random

    kw = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
    model = unet("tiny", **kw)
    m1, m2 = random(model, 0.5, seed=0), random(model, 0.5, seed=1)
    train(model, small_digits, 2, batch_size=16, mask=m1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="mask is not the one this checkpoint was trained with"):
        train(unet("tiny", **kw), small_digits, 4, batch_size=16, mask=m2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="mask"):
        train(unet("tiny", **kw), small_digits, 4, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    res = train(unet("tiny", **kw), small_digits, 4, batch_size=16, mask=m1, checkpoint_dir=tmp_path, progress=False)
    assert res.resumed_from == 2 and res.steps == 4


def test_ema_equals_an_ema_recomputed_from_the_raw_weights(small_digits):
    """At lr > 0 the EMA differs from the raw weights and equals, parameter by parameter, the EMA of the
    raw weights after each step with diffusers' warm-up decay (EMAModel, use_ema_warmup, inv_gamma 1,
    power 2/3): d_1 = 0, d_s = min(0.9999, 1 - (1 + (s - 1)) ** (-2/3)); e_s = d_s e_{s-1} + (1 - d_s) w_s."""
    from lthdiff.models import unet

    def micro():
        return unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4, seed=0)

    steps = 4
    kw = dict(batch_size=16, lr=1e-2, seed=0, progress=False)
    # training is deterministic by seed, so the raw weights after step s are those of an s-step run
    raw = [dict(train(micro(), small_digits, s, **kw).model.named_parameters()) for s in range(1, steps + 1)]
    ema = {k: v.detach().clone() for k, v in raw[0].items()}  # step 1: decay 0, the EMA is the weights
    for s in range(2, steps + 1):
        d = min(0.9999, 1 - (1 + (s - 1)) ** (-2 / 3))
        ema = {k: d * ema[k] + (1 - d) * raw[s - 1][k].detach() for k in ema}
    res = train(micro(), small_digits, steps, **kw)
    got = dict(res.ema.named_parameters())
    final = dict(res.model.named_parameters())
    assert any(not torch.allclose(got[k], final[k], atol=1e-6) for k in got)  # not a copy of the raw weights
    for k in ema:
        assert torch.allclose(got[k], ema[k], rtol=1e-5, atol=1e-7), k


def test_the_log_says_resumed_for_its_own_run_and_not_for_a_forked_start(tmp_path, small_digits, capsys, monkeypatch):
    """Committed notebook outputs must not come from resumed runs (tests/test_notebook_hygiene.py): the log says so
    when a run continues a checkpoint an earlier process wrote, and not when it trains on in the same process (a
    network trained in pieces) or from another run's checkpoint (late rewinding)."""
    from lthdiff.models import unet
    from lthdiff.training import loop
    from lthdiff.training.loop import fork_checkpoint

    kw = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
    train(unet("tiny", **kw), small_digits, 3, batch_size=16, checkpoint_dir=tmp_path / "a")
    train(unet("tiny", **kw), small_digits, 4, batch_size=16, checkpoint_dir=tmp_path / "a")
    assert "resumed" not in capsys.readouterr().out  # the same process trains on
    monkeypatch.setattr(loop, "_PROCESS", "a later session")
    train(unet("tiny", **kw), small_digits, 5, batch_size=16, checkpoint_dir=tmp_path / "a")
    assert "5 steps (1 now, resumed at step 4)" in capsys.readouterr().out
    fork_checkpoint(tmp_path / "a", tmp_path / "b")
    train(unet("tiny", **kw), small_digits, 8, batch_size=16, checkpoint_dir=tmp_path / "b")
    out = capsys.readouterr().out
    assert "8 steps (3 now)" in out and "resumed" not in out
