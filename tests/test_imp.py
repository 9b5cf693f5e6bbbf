import pytest
import torch

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.lottery import run_imp
from lthdiff.lottery import IMPResult, rollback
from lthdiff.models import load_model, unet

KW = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


def micro(seed=0):
    return unet("tiny", seed=seed, **KW)


def _imp(ds, run_dir, **kw):
    args = dict(rounds=2, steps_per_round=3, prune_per_round=0.5, batch_size=16, run_dir=run_dir,
                progress=False, checkpoint_every=2)
    args.update(kw)
    return run_imp(micro(), ds, **args)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_rounds_counts_subsets_and_artefacts(tmp_path, small_digits):
    res = _imp(small_digits, tmp_path)
    assert [r.round for r in res.rounds] == [0, 1, 2]
    n = sum(m.numel() for m in res.rounds[0].load_mask().values())
    prev = None
    for r, target in zip(res.rounds, [0.0, 0.5, 0.75]):
        mask = r.load_mask()
        pruned = sum(int((~m).sum()) for m in mask.values())
        assert pruned == round(target * n)  # exact global count
        if prev is not None:  # IMP masks only ever shrink
            assert all(torch.all(mask[k] <= prev[k]) for k in mask)
        # saved tickets hold exact zeros where pruned, in raw and EMA weights, after a reload
        for ema in (False, True):
            p = _params(r.load_model(ema=ema))
            assert all(torch.all(p[k][~mask[k]] == 0) for k in mask)
        prev = mask
    assert set(res.rounds[1].controls) == {"random_reinit", "random_mask"}
    table = res.table()
    assert len(table) == 3 + 2 * 2


def test_controls(tmp_path, small_digits):
    res = _imp(small_digits, tmp_path, rounds=1)
    ticket = res.rounds[1].load_mask()
    reinit = res.rounds[1].controls["random_reinit"]
    rmask = res.rounds[1].controls["random_mask"].load_mask()
    assert all(torch.equal(ticket[k], reinit.load_mask()[k]) for k in ticket)
    # the random mask keeps each layer's count but not the ticket's positions
    assert all(int(ticket[k].sum()) == int(rmask[k].sum()) for k in ticket)
    assert any(not torch.equal(ticket[k], rmask[k]) for k in ticket)


def test_rewind_to_init_and_none(tmp_path, small_digits):
    """With lr=0 training is the identity, so each round's weights show where it started from."""
    init = _params(micro())
    res = _imp(small_digits, tmp_path / "init", rounds=1, lr=0.0, ema=False, controls=())
    mask, w = res.rounds[1].load_mask(), _params(res.rounds[1].load_model())
    assert all(torch.equal(w[k], init[k] * mask[k]) for k in mask)
    res = _imp(small_digits, tmp_path / "none", rounds=1, lr=0.0, ema=False, controls=(), rewind="none")
    assert all(torch.equal(_params(res.rounds[1].load_model())[k], init[k] * mask[k]) for k in mask)


def test_late_rewind_saves_weights_at_step_k(tmp_path, small_digits):
    from lthdiff.training import train

    _imp(small_digits, tmp_path, rounds=1, rewind="step:2", controls=(), steps_per_round=4)
    expected = train(micro(), small_digits, 2, batch_size=16, progress=False).model
    got = load_model(tmp_path / "rewind")
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), got.state_dict().values()))


def test_resume_after_interruption_equals_uninterrupted(tmp_path, small_digits):
    straight = _imp(small_digits, tmp_path / "a")

    class Killed(Exception):
        pass

    def die(info):
        if info.round == 1:
            raise Killed

    with pytest.raises(Killed):
        _imp(small_digits, tmp_path / "b", on_round=die)
    # also lose a half-finished round: its summary marker is gone, its checkpoints remain
    resumed = _imp(small_digits, tmp_path / "b")
    for a, b in zip(straight.rounds, resumed.rounds):
        ma, mb = a.load_mask(), b.load_mask()
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
        pa, pb = _params(a.load_model()), _params(b.load_model())
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
        assert a.final_loss == b.final_loss


def test_extending_rounds_continues(tmp_path, small_digits):
    _imp(small_digits, tmp_path, rounds=1, controls=())
    res = _imp(small_digits, tmp_path, rounds=2, controls=())
    assert len(res.rounds) == 3 and IMPResult.load(tmp_path).rounds[-1].sparsity == pytest.approx(0.75, abs=1e-4)


def test_different_arguments_are_refused(tmp_path, small_digits):
    _imp(small_digits, tmp_path, rounds=1, controls=())
    with pytest.raises(ValueError, match="prune_per_round|sparsity_schedule"):
        _imp(small_digits, tmp_path, rounds=1, controls=(), prune_per_round=0.3)
    with pytest.raises(ValueError, match="init_digest"):
        run_imp(micro(seed=5), small_digits, rounds=1, steps_per_round=3, prune_per_round=0.5, batch_size=16,
                run_dir=tmp_path, controls=(), progress=False, checkpoint_every=2)


def test_sparsity_schedule_and_bad_arguments(tmp_path, small_digits):
    res = _imp(small_digits, tmp_path, rounds=2, sparsity_schedule=[0.3, 0.9], controls=())
    assert [round(r.sparsity, 3) for r in res.rounds] == [0.0, 0.3, 0.9]
    with pytest.raises(ValueError, match="rewind"):
        _imp(small_digits, tmp_path / "x", rewind="halfway")
    with pytest.raises(ValueError, match="controls"):
        _imp(small_digits, tmp_path / "y", controls=("lucky",))
    with pytest.raises(ValueError, match="non-decreasing"):
        _imp(small_digits, tmp_path / "z", sparsity_schedule=[0.5, 0.2])


def test_rollback_then_continue(tmp_path, small_digits):
    straight = _imp(small_digits, tmp_path / "a", controls=())
    _imp(small_digits, tmp_path / "b", controls=())
    branch = rollback(tmp_path / "b", 1)
    assert (branch / "round_02" / "summary.json").exists()  # earlier work kept
    assert [r.round for r in IMPResult.load(tmp_path / "b").rounds] == [0, 1]
    again = _imp(small_digits, tmp_path / "b", controls=())
    ma, mb = straight.rounds[2].load_mask(), again.rounds[2].load_mask()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    with pytest.raises(ValueError, match="completed"):
        rollback(tmp_path / "b", 7)


def test_one_shot_control_prunes_dense_weights_and_can_be_added_later(tmp_path, small_digits):
    res = _imp(small_digits, tmp_path, rounds=2, controls=())
    ticket_params = _params(res.rounds[2].load_model(ema=False))
    res = _imp(small_digits, tmp_path, rounds=2, controls=("one_shot",))  # adding a control trains only it
    assert torch.equal(_params(res.rounds[2].load_model(ema=False))["conv_in.weight"], ticket_params["conv_in.weight"])
    dense = res.rounds[0].load_model(ema=False)
    for r in res.rounds[1:]:
        one = r.controls["one_shot"]
        expect = pruners.magnitude(dense, r.sparsity, mask=M.ones(dense))
        got = one.load_mask()
        assert all(torch.equal(got[k], expect[k]) for k in expect)  # pruned from the dense weights in one shot
        assert sum(int((~m).sum()) for m in got.values()) == sum(int((~m).sum()) for m in r.load_mask().values())
    # round 1: one-shot and iterative coincide; round 2 they differ (IMP re-ranks retrained weights)
    t1, o1 = res.rounds[1].load_mask(), res.rounds[1].controls["one_shot"].load_mask()
    assert all(torch.equal(t1[k], o1[k]) for k in t1)
    assert res.rounds[1].controls["one_shot"].final_loss == res.rounds[1].final_loss
    t2, o2 = res.rounds[2].load_mask(), res.rounds[2].controls["one_shot"].load_mask()
    assert any(not torch.equal(t2[k], o2[k]) for k in t2)
    assert IMPResult.load(tmp_path).config["controls"] == ["one_shot"]


def test_resumed_run_is_running_again_until_it_completes(tmp_path, small_digits):
    from lthdiff.tracking import Registry

    db = tmp_path / "lthdiff.db"
    _imp(small_digits, tmp_path / "run", rounds=1, controls=(), registry=db)
    reg = Registry(db)
    assert list(reg.experiments()["status"]) == ["completed"]
    seen = []
    _imp(small_digits, tmp_path / "run", rounds=2, controls=(), registry=db,
         on_round=lambda info: seen.append(reg.experiments().loc[0, "status"]))
    assert seen[-1] == "running"  # while the added round is written
    ex = reg.experiments()
    assert len(ex) == 1 and ex.loc[0, "status"] == "completed" and ex.loc[0, "rounds"] == 3


def test_ticket_masks_are_the_global_magnitude_ranking(tmp_path, small_digits):
    """Each round's mask is pruners.magnitude(previous trained weights, s, scope="global") within the
    previous mask, and it is not the layer-wise one (which prunes every layer to s exactly)."""
    res = _imp(small_digits, tmp_path)
    prev = M.ones(micro())
    for r, s in zip(res.rounds[1:], (0.5, 0.75)):
        trained = res.rounds[r.round - 1].load_model(ema=False)
        want = pruners.magnitude(trained, s, scope="global", mask=prev)
        got = r.load_mask()
        assert all(torch.equal(got[k], want[k]) for k in want), f"round {r.round}"
        layer = pruners.magnitude(trained, s, scope="layer", mask=prev)
        assert any(not torch.equal(got[k], layer[k]) for k in want)  # the test tells the two scopes apart
        # and independently: every kept weight's |w| is >= every pruned one's, across layers
        kept = torch.cat([trained.get_parameter(k).detach().abs()[m] for k, m in got.items()])
        dropped = torch.cat([trained.get_parameter(k).detach().abs()[prev[k] & ~m] for k, m in got.items()])
        assert kept.min() >= dropped.max()
        prev = got


def test_results_print_as_a_compact_table(tmp_path, small_digits):
    res = _imp(small_digits, tmp_path, rounds=1, controls=("random_reinit",))
    text = repr(res)
    lines = text.splitlines()
    assert len(text) < 1000 and len(lines) == 1 + 1 + 3  # header, column names, 3 networks
    assert "random_reinit" in text and "loss_at_init" in lines[1] and "layer_sparsity" not in text
    one = repr(res.rounds[1])
    assert one.startswith("RoundInfo(round 1 ticket, sparsity 50.0%") and "controls: random_reinit" in one
    assert "loss at init" in one and len(one) < 200
    html = res._repr_html_()
    assert html.count("<tr") == 4 and "IMPResult" in html
