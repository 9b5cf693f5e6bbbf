"""Rewinding, checked against an independent recomputation with a learning rate above zero.

For each rewind mode the expected ticket is rebuilt here from public pieces only: the mask from
round 0's trained weights with :func:`lthdiff.pruners.magnitude`, the start weights (theta_0,
theta_K or the trained weights) from a fresh model or a fresh training run, then :func:`train`
with that mask.  The saved ``round_01`` network must equal it bit for bit.  With lr > 0 the three
starts differ, so a ticket that kept its trained weights instead of rewinding fails these tests.
"""
import copy

import pytest
import torch

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.lottery import run_imp
from lthdiff.models import load_model, unet
from lthdiff.training import train

KW = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
STEPS, BATCH = 4, 16


def micro(seed=0):
    return unet("tiny", seed=seed, **KW)


def _imp(ds, run_dir, **kw):
    args = dict(rounds=1, steps_per_round=STEPS, prune_per_round=0.5, batch_size=BATCH, run_dir=run_dir,
                progress=False, checkpoint_every=2, controls=())
    args.update(kw)
    return run_imp(micro(), ds, **args)


def _train(start, ds, steps, mask):
    """Train exactly as a round does (same seed, batch, default lr, EMA), without a checkpoint folder."""
    return train(start, ds, steps, batch_size=BATCH, seed=0, mask=mask, progress=False)


def _assert_same_weights(expected, info):
    """``expected``: a TrainResult or another saved network; ``info``: a saved network of the run."""
    for ema in (False, True):
        want = (expected.ema if ema else expected.model) if hasattr(expected, "ema") else expected.load_model(ema=ema)
        got = info.load_model(ema=ema).state_dict()
        for k, v in want.state_dict().items():
            assert torch.equal(v, got[k]), f"{k} ({'ema' if ema else 'raw'}) differs from the expected ticket"


@pytest.mark.parametrize("rewind", ["init", "step:2", "none"])
def test_ticket_starts_from_the_rewind_point(tmp_path, small_digits, rewind):
    res = _imp(small_digits, tmp_path, rewind=rewind)
    trained = res.rounds[0].load_model(ema=False)
    mask = pruners.magnitude(trained, 0.5)
    assert all(torch.equal(mask[k], v) for k, v in res.rounds[1].load_mask().items())
    if rewind == "init":
        start, steps = micro(), STEPS
    elif rewind == "step:2":
        start, steps = _train(micro(), small_digits, 2, None).model, STEPS - 2
    else:
        start, steps = trained, STEPS
    _assert_same_weights(_train(start, small_digits, steps, mask), res.rounds[1])


def test_rewind_points_really_differ(tmp_path, small_digits):
    """The premise of the tests above: with lr > 0, theta_0, theta_K and the trained weights differ."""
    res = _imp(small_digits, tmp_path)
    t0 = micro().state_dict()["conv_in.weight"]
    tk = _train(micro(), small_digits, 2, None).model.state_dict()["conv_in.weight"]
    tt = res.rounds[0].load_model(ema=False).state_dict()["conv_in.weight"]
    assert not torch.equal(t0, tk) and not torch.equal(tk, tt) and not torch.equal(t0, tt)


def test_controls_and_second_round_rewind_to_init(tmp_path, small_digits):
    """Round 2's ticket prunes round 1's trained ticket and rewinds to theta_0; the random-mask and
    one-shot controls also start from theta_0, each with its own mask."""
    res = _imp(small_digits, tmp_path, rounds=2, controls=("random_mask", "one_shot"))
    r1, r2 = res.rounds[1], res.rounds[2]
    mask2 = pruners.magnitude(r1.load_model(ema=False), 0.75, mask=r1.load_mask())
    assert all(torch.equal(mask2[k], v) for k, v in r2.load_mask().items())
    _assert_same_weights(_train(micro(), small_digits, STEPS, mask2), r2)

    dense = res.rounds[0].load_model(ema=False)
    one_shot = pruners.magnitude(dense, 0.75, mask=M.ones(dense))
    assert all(torch.equal(one_shot[k], v) for k, v in r2.controls["one_shot"].load_mask().items())
    _assert_same_weights(_train(micro(), small_digits, STEPS, one_shot), r2.controls["one_shot"])

    rmask = r2.controls["random_mask"].load_mask()
    assert any(not torch.equal(rmask[k], mask2[k]) for k in rmask)
    _assert_same_weights(_train(micro(), small_digits, STEPS, rmask), r2.controls["random_mask"])


def test_late_rewind_resumes_from_a_checkpoint_past_k(tmp_path, small_digits):
    """A run killed in round 0 after a checkpoint past K resumes (it used to refuse: 'already holds a
    run trained for 4 steps, more than steps=2') and ends identical to an uninterrupted run."""
    straight = _imp(small_digits, tmp_path / "a", rewind="step:2", steps_per_round=6)
    # The state a kill at step 4 of round 0 leaves: theta_K saved, a checkpoint at step 4, no summary.
    run_b = tmp_path / "b"
    run_b.mkdir()
    first = train(micro(), small_digits, 2, batch_size=BATCH, seed=0, mask=M.ones(micro()),
                  checkpoint_dir=run_b / "round_00" / "ckpt", checkpoint_every=2, progress=False)
    from lthdiff.models import save_model

    save_model(first.model, run_b / "rewind")
    train(first.model, small_digits, 4, batch_size=BATCH, seed=0, mask=M.ones(micro()),
          checkpoint_dir=run_b / "round_00" / "ckpt", checkpoint_every=2, progress=False)
    resumed = _imp(small_digits, run_b, rewind="step:2", steps_per_round=6)
    for a, b in zip(straight.rounds, resumed.rounds):
        _assert_same_weights(a, b)
    ra, rb = load_model(tmp_path / "a" / "rewind").state_dict(), load_model(run_b / "rewind").state_dict()
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_controls_under_late_rewinding_start_from_theta_k(tmp_path, small_digits):
    """rewind="step:2": the ticket, random_mask and one_shot of round 2 each equal train(theta_2, their
    mask, T - 2) computed here; random_reinit equals train(the documented fresh init, the ticket's
    mask, T - 2) and differs from the ticket."""
    from lthdiff.lottery import reinit
    from lthdiff.runtime import mix_seed

    res = _imp(small_digits, tmp_path, rounds=2, rewind="step:2",
               controls=("random_reinit", "random_mask", "one_shot"))
    theta_2 = _train(micro(), small_digits, 2, None).model  # the dense trajectory at step 2
    r2 = res.rounds[2]
    for info in (r2, r2.controls["random_mask"], r2.controls["one_shot"]):
        _assert_same_weights(_train(copy.deepcopy(theta_2), small_digits, STEPS - 2, info.load_mask()), info)
    dense = res.rounds[0].load_model(ema=False)  # one_shot's mask: dense pruned straight to 75 %
    one_shot = pruners.magnitude(dense, 0.75, mask=M.ones(dense))
    assert all(torch.equal(one_shot[k], v) for k, v in r2.controls["one_shot"].load_mask().items())
    rr = r2.controls["random_reinit"]
    assert all(torch.equal(v, r2.load_mask()[k]) for k, v in rr.load_mask().items())  # the ticket's mask
    fresh = reinit(micro(), mix_seed(0, 2, 0x5EED))
    _assert_same_weights(_train(fresh, small_digits, STEPS - 2, r2.load_mask()), rr)
    a, b = rr.load_model(ema=False).state_dict(), r2.load_model(ema=False).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # random reinit is not the ticket
    # the fresh init is a new draw, not theta_0 or theta_2
    t0 = micro().state_dict()["conv_in.weight"]
    assert not torch.equal(fresh.state_dict()["conv_in.weight"], t0)
