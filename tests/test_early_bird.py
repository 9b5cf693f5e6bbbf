"""Early-bird tickets (You et al. 2020): mask distance, stopping rule, resume, retraining, errors, plot."""
import pytest
import torch

from lthdiff.lottery import early_bird as EB
from lthdiff import masks as M
from lthdiff.store import read_json
from lthdiff.models import load_model, unet

KW = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


def micro(seed=0):
    return unet("tiny", seed=seed, **KW)


def _find(ds, run_dir, **kw):
    args = dict(every=2, window=3, eps=0.1, max_steps=12, batch_size=16, lr=1e-2, progress=False)
    args.update(kw)
    return EB.find(micro(), ds, 0.5, run_dir=run_dir, **args)


def test_mask_distance_exact_on_hand_made_masks():
    a = {"x": torch.tensor([True, True, False, False]), "y": torch.zeros(2, 3, dtype=torch.bool)}
    b = {"x": torch.tensor([True, False, True, False]), "y": torch.tensor([[True, True, True], [False] * 3])}
    assert EB.mask_distance(a, b) == pytest.approx((2 + 3) / 10)
    assert EB.mask_distance(a, a) == 0.0
    assert EB.mask_distance(b, a) == EB.mask_distance(a, b)
    ones = {k: torch.ones_like(v) for k, v in a.items()}
    assert EB.mask_distance(ones, {k: ~v for k, v in ones.items()}) == 1.0
    assert EB.mask_distance({}, {}) == 0.0


@pytest.mark.parametrize("b, match", [({"x": torch.ones(4, dtype=torch.bool)}, "different parameters"),
                                      ({"x": torch.ones(4, dtype=torch.bool), "y": torch.ones(3, dtype=torch.bool)},
                                       "shapes"),
                                      ({"x": torch.ones(4), "y": torch.ones(2, 3)}, "bool")])
def test_mask_distance_rejects_mismatched_masks(b, match):
    a = {"x": torch.ones(4, dtype=torch.bool), "y": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=match):
        EB.mask_distance(a, b)


def test_frozen_weights_stop_when_fifo_first_full(tmp_path, small_digits):
    res = _find(small_digits, tmp_path, lr=0.0)  # lr 0: the weights, hence the mask, never change
    assert res.detected and res.stop_step == 3 * 2 == res.steps_trained
    assert res.distances == [(4, 0.0), (6, 0.0)]
    assert M.sparsity(res.mask) == pytest.approx(0.5, abs=1e-4)
    ref = M.load(tmp_path / "masks" / "step_0000006.safetensors")[0]
    assert all(torch.equal(res.mask[k], ref[k]) for k in ref)


def test_training_does_not_stop_before_the_fifo_is_full(tmp_path, small_digits):
    # eps = 1 accepts any distance: the earliest possible stop is window * every, never before
    res = _find(small_digits, tmp_path / "loose", eps=1.0)
    assert res.stop_step == 6
    # a tiny eps with a real learning rate: the masks keep changing, the search gives up at max_steps
    res = _find(small_digits, tmp_path / "strict", eps=1e-9, max_steps=8)
    assert not res.detected and res.stop_step is None and res.steps_trained == 8
    assert [s for s, _ in res.distances] == [4, 6, 8] and all(d > 0 for _, d in res.distances)
    # each distance is the max over the FIFO, recomputed here from the saved masks of the last window
    saved = {s: M.load(tmp_path / "strict" / "masks" / f"step_{s:07d}.safetensors")[0] for s in (4, 6, 8)}
    assert res.distances[-1][1] == pytest.approx(max(EB.mask_distance(saved[8], saved[s]) for s in (4, 6)))


def test_resume_equals_uninterrupted(tmp_path, small_digits):
    full = _find(small_digits, tmp_path / "a", eps=1e-9, max_steps=10)
    part = _find(small_digits, tmp_path / "b", eps=1e-9, max_steps=4)  # a search that gave up early ...
    assert part.steps_trained == 4
    resumed = _find(small_digits, tmp_path / "b", eps=1e-9, max_steps=10)  # ... continued with a larger budget
    assert resumed.distances == full.distances and resumed.steps_trained == full.steps_trained == 10
    assert all(torch.equal(resumed.mask[k], full.mask[k]) for k in full.mask)
    again = _find(small_digits, tmp_path / "b", eps=1e-9, max_steps=10)  # finished: nothing retrained
    assert again.distances == full.distances
    state = read_json(tmp_path / "b" / "early_bird.json")
    assert state["checks"] == [2, 4, 6, 8, 10] and state["done"]


def test_resume_with_other_arguments_refused(tmp_path, small_digits):
    _find(small_digits, tmp_path, lr=0.0, max_steps=6)
    with pytest.raises(ValueError, match="different arguments"):
        _find(small_digits, tmp_path, lr=0.0, max_steps=6, eps=0.05)


def test_retrain_trains_the_mask_from_theta0(tmp_path, small_digits):
    res = _find(small_digits, tmp_path, lr=0.0, max_steps=6)
    init = micro()
    rewound = load_model(res.rewind_dir)
    assert all(torch.equal(p, q) for p, q in zip(init.state_dict().values(), rewound.state_dict().values()))
    info = EB.retrain(res, small_digits, 3, progress=False)
    assert info.summary["stop_step"] == 6 and info.summary["steps"] == 3 and info.variant == "early_bird"
    mask = info.load_mask()
    assert all(torch.equal(mask[k], res.mask[k]) for k in mask)
    params = dict(info.load_model(ema=False).named_parameters())
    assert all(torch.all(params[k][~m] == 0) for k, m in mask.items())


@pytest.mark.parametrize("kw, match", [
    (dict(sparsity=0.0), "sparsity"), (dict(sparsity=1.0), "sparsity"), (dict(every=0), "every"),
    (dict(window=1), "window"), (dict(eps=0.0), "eps"), (dict(eps=1.5), "eps"), (dict(max_steps=1), "max_steps"),
    (dict(rewind="late"), "rewind"), (dict(rewind="step:99"), "rewind step"),
])
def test_bad_arguments(tmp_path, small_digits, kw, match):
    args = dict(every=2, window=3, eps=0.1, max_steps=12, progress=False)
    sparsity = kw.pop("sparsity", 0.5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        EB.find(micro(), small_digits, sparsity, run_dir=tmp_path, **args)
    assert not (tmp_path / "config.json").exists()  # refused before anything was written


def test_mask_distance_curve_plots_the_recorded_curve(tmp_path, small_digits):
    pytest.importorskip("matplotlib")
    from lthdiff.reporting import plots

    res = _find(small_digits, tmp_path, lr=0.0, max_steps=6)
    for source in (res, tmp_path, tmp_path / "early_bird.json"):
        fig = plots.mask_distance_curve(source)
        line = fig.axes[0].lines[0]
        assert list(line.get_xdata()) == [4, 6] and list(line.get_ydata()) == [0.0, 0.0]
        plots.close(fig)
    with pytest.raises(ValueError, match="list of"):
        plots.mask_distance_curve(42)


def test_retrain_refuses_a_stale_ticket(tmp_path, small_digits):
    res = _find(small_digits, tmp_path, lr=0.0, eps=1e-9, max_steps=4)
    EB.retrain(res, small_digits, 2, progress=False)
    with pytest.raises(ValueError, match="remove that folder"):
        EB.retrain(res, small_digits, 3, progress=False)


@pytest.mark.parametrize("rewind", ["init", "step:2"])
def test_rewind_weights_and_retrained_ticket_at_a_real_learning_rate(tmp_path, small_digits, rewind):
    """lr > 0, so theta_0, theta_2 and the searched weights all differ: the rewind folder holds theta_0
    (or theta_2 of the dense trajectory), and the retrained ticket equals train(that start, the found
    mask, steps) computed here."""
    from lthdiff.training import train

    res = _find(small_digits, tmp_path, rewind=rewind, max_steps=6)
    kw = dict(batch_size=16, lr=1e-2, seed=0, progress=False)
    start = micro() if rewind == "init" else train(micro(), small_digits, 2, mask=M.ones(micro()), **kw).model
    rewound = load_model(res.rewind_dir).state_dict()
    assert all(torch.equal(v, rewound[k]) for k, v in start.state_dict().items())
    searched = train(micro(), small_digits, res.steps_trained, mask=M.ones(micro()), **kw).model.state_dict()
    assert any(not torch.equal(v, searched[k]) for k, v in rewound.items())  # not the trained weights
    info = EB.retrain(res, small_digits, 3, progress=False)
    want = train(start, small_digits, 3, mask=res.mask, **kw)
    for ema in (False, True):
        got = info.load_model(ema=ema).state_dict()
        ref = (want.ema if ema else want.model).state_dict()
        assert all(torch.equal(v, got[k]) for k, v in ref.items()), ("ema" if ema else "raw")
