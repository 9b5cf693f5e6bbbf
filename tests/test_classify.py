"""Classic lottery-ticket machinery on classifiers: presets, task, evaluation, IMP through run_imp."""
import math

import pytest
import torch
from torch.utils.data import Subset

from lthdiff.evaluation import analysis as A
from lthdiff.models import classifiers as CL
from lthdiff import data as D
from lthdiff.reporting import plots as P
from lthdiff.lottery import run_imp
from lthdiff.models import load_model, save_model
from lthdiff.training import train


@pytest.fixture(scope="module")
def digits8():
    return D.load_labelled("digits", image_size=8, split="train")


@pytest.fixture(scope="module")
def small8(digits8):
    return Subset(digits8, range(64))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _imp(ds, run_dir, **kw):
    args = dict(rounds=2, steps_per_round=3, prune_per_round=0.5, batch_size=16, run_dir=run_dir, ema=False,
                task="classification", progress=False, checkpoint_every=2)
    args.update(kw)
    return run_imp(CL.build("lenet-300-100", image_size=8), ds, **args)


@pytest.mark.parametrize("preset,channels,size", [("lenet-300-100", 1, 8), ("lenet-5", 1, 8), ("lenet-5", 1, 28),
                                                  ("resnet-18", 3, 8)])
def test_presets_shape_seed_and_save_load_round_trip(tmp_path, preset, channels, size):
    model = CL.build(preset, in_channels=channels, image_size=size, num_classes=7, seed=3)
    assert model.eval()(torch.zeros(2, channels, size, size)).shape == (2, 7)
    assert model.lthdiff_spec == {"preset": preset, "in_channels": channels, "image_size": size,
                                  "num_classes": 7, "seed": 3}
    same, other = CL.build(preset, channels, size, 7, seed=3), CL.build(preset, channels, size, 7, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # a trained model, not a rebuild from the seed
    back = load_model(save_model(model, tmp_path / "m"))
    assert type(back) is type(model) and back.lthdiff_spec == model.lthdiff_spec
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


def test_resnet18_has_cifar_stem_and_default_init():
    model = CL.build("resnet-18", in_channels=3, image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    # PyTorch's default conv init (kaiming_uniform, a=sqrt(5)) is bounded by 1/sqrt(fan_in);
    # torchvision's kaiming_normal init is not.  The random-reinit control re-runs the default init.
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            assert m.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-7, name


def test_evaluate_trained_lenet_on_digits():
    tr = D.load_labelled("digits", image_size=16, split="train")
    te = D.load_labelled("digits", image_size=16, split="test")
    model = CL.build("lenet-300-100", image_size=16)
    before = A.evaluate_accuracy(model, te)
    res = train(model, tr, 150, batch_size=64, ema=False, task="classification", progress=False)
    after = A.evaluate_accuracy(res.model, te, batch_size=100)
    assert before < 0.3 and after > 0.8
    assert res.model.training  # evaluate restores the mode it found
    correct = sum(int(res.model(x[None]).argmax() == y) for x, y in (te[i] for i in range(len(te))))
    assert after == correct / len(te)


def test_imp_masks_exact_nested_and_zero(tmp_path, small8):
    res = _imp(small8, tmp_path)
    assert [r.round for r in res.rounds] == [0, 1, 2]
    n = sum(m.numel() for m in res.rounds[0].load_mask().values())
    prev = None
    for r, target in zip(res.rounds, [0.0, 0.5, 0.75]):
        for info in [r, *r.controls.values()]:
            mask = info.load_mask()
            assert sum(int((~m).sum()) for m in mask.values()) == round(target * n)
            weights = _params(info.load_model(ema=False))
            assert all(torch.all(weights[k][~mask[k]] == 0) for k in mask)
        mask = r.load_mask()
        if prev is not None:
            assert all(torch.all(mask[k] <= prev[k]) for k in mask)
        prev = mask
    assert set(res.rounds[2].controls) == {"random_reinit", "random_mask"}


def test_output_layer_pruned_at_half_rate(tmp_path, small8):
    model = CL.build("lenet-300-100", image_size=8)
    alloc = CL.output_rate_allocation(model, prune_per_round=0.5, factor=0.5)
    assert CL.output_layer(model) == "fc3.weight" and len(alloc) == 30
    res = _imp(small8, tmp_path, scope="layer", allocation=alloc, controls=("random_mask",))
    for r in res.rounds[1:]:
        for info in (r, r.controls["random_mask"]):
            mask = info.load_mask()
            for name, m in mask.items():
                rate = 0.25 if name == "fc3.weight" else 0.5
                assert int((~m).sum()) == round((1 - (1 - rate) ** r.round) * m.numel()), name


def test_rewind_to_init_weights_exactly(tmp_path, small8):
    """With lr=0 training is the identity, so a round's weights are where it started from."""
    init = _params(CL.build("lenet-300-100", image_size=8))
    res = _imp(small8, tmp_path / "lr0", lr=0.0)
    rewind = _params(load_model(tmp_path / "lr0" / "rewind"))
    assert all(torch.equal(rewind[k], init[k]) for k in init)
    for r in res.rounds[1:]:
        mask, w = r.load_mask(), _params(r.load_model(ema=False))
        assert all(torch.equal(w[k], rewind[k] * mask[k]) for k in mask)
        rm = r.controls["random_mask"]
        cmask, cw = rm.load_mask(), _params(rm.load_model(ema=False))
        assert all(torch.equal(cw[k], rewind[k] * cmask[k]) for k in cmask)
        # random reinit: the ticket's mask on fresh weights from the init distribution (the kept
        # init weights are biased large: magnitude pruning chose them, so compare to the whole layer)
        ri = _params(r.controls["random_reinit"].load_model(ema=False))
        for k in mask:
            assert not torch.equal(ri[k], w[k])
            assert float(ri[k][mask[k]].std()) == pytest.approx(float(init[k].std()), rel=0.15)
    # with real training the rewind point is still the untouched initialisation
    _imp(small8, tmp_path / "lr", rounds=1, controls=())
    trained_rewind = _params(load_model(tmp_path / "lr" / "rewind"))
    assert all(torch.equal(trained_rewind[k], init[k]) for k in init)


def test_resume_extending_rounds_equals_straight_run(tmp_path, small8):
    alloc = CL.output_rate_allocation(CL.build("lenet-300-100", image_size=8), prune_per_round=0.5)
    kw = dict(scope="layer", allocation=alloc, controls=("random_mask",))
    straight = _imp(small8, tmp_path / "a", **kw)

    class Killed(Exception):
        pass

    def die(info):
        if info.round == 1:
            raise Killed

    with pytest.raises(Killed):  # a process killed after round 1 ...
        _imp(small8, tmp_path / "b", on_round=die, **kw)
    _imp(small8, tmp_path / "b", rounds=1, **kw)  # ... a shorter run on the same directory ...
    # ... and a kill while round 1's control trained: its completion marker never got written
    (tmp_path / "b" / "round_01" / "controls" / "random_mask" / "summary.json").unlink()
    resumed = _imp(small8, tmp_path / "b", **kw)  # ... and restarted
    assert len(resumed.rounds) == 3
    for a, b in zip(straight.rounds, resumed.rounds):
        for ia, ib in [(a, b), *zip(a.controls.values(), b.controls.values())]:
            ma, mb = ia.load_mask(), ib.load_mask()
            assert all(torch.equal(ma[k], mb[k]) for k in ma)
            pa, pb = _params(ia.load_model(ema=False)), _params(ib.load_model(ema=False))
            assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_imp_accuracy_table(tmp_path, small8):
    res = _imp(small8, tmp_path)
    test = Subset(D.load_labelled("digits", image_size=8, split="test"), range(50))
    df = A.imp_accuracy(res, test, device="cpu")
    assert list(df.columns) == ["round", "variant", "sparsity", "remaining", "accuracy"]
    assert len(df) == 1 + 2 * 3
    assert set(df["variant"]) == {"ticket", "random_reinit", "random_mask"}
    assert ((df["remaining"] + df["sparsity"]) == 1).all()
    row = df[(df["round"] == 2) & (df["variant"] == "random_mask")].iloc[0]
    model = res.rounds[2].controls["random_mask"].load_model(ema=False)
    assert row["accuracy"] == A.evaluate_accuracy(model, test)
    again = A.imp_accuracy(tmp_path, test, device="cpu")  # from the run directory
    assert again.equals(df)
    ax = P.plot_accuracy(df)
    assert ax.get_xscale() == "log" and len(ax.containers) == 3


def test_bad_inputs(small8, digits8, micro_unet):
    with pytest.raises(ValueError, match="lenet-7.*accepted"):
        CL.build("lenet-7")
    with pytest.raises(ValueError, match="image_size"):
        CL.build("lenet-5", image_size=4)
    with pytest.raises(ValueError, match="num_classes"):
        CL.build("lenet-300-100", num_classes=1)
    model = CL.build("lenet-300-100", image_size=8)
    images_only = D.load_labelled("digits", image_size=8).base  # yields images, not pairs
    with pytest.raises(ValueError, match=r"\(image, label\)"):
        A.evaluate_accuracy(model, images_only)
    with pytest.raises(ValueError, match=r"\(image, label\)"):
        train(model, images_only, 2, task="classification", progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\).*expects \(1, 8, 8\)"):
        A.evaluate_accuracy(model, D.load_labelled("digits", image_size=16, split="test"))
    with pytest.raises(ValueError, match="logits|classes"):
        train(micro_unet, D.load_labelled("digits", image_size=16), 2, task="classification", progress=False)
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        A.evaluate_accuracy(CL.build("lenet-300-100", image_size=8, num_classes=3), Subset(digits8, [i for i in range(64)
                                                                                       if digits8[i][1] >= 3]))
    floats = [(x, float(y)) for x, y in (small8[i] for i in range(4))]
    with pytest.raises(ValueError, match="integer class"):
        A.evaluate_accuracy(model, floats)
    with pytest.raises(ValueError, match="diffusion"):  # a classifier under the diffusion task
        train(model, small8, 2, progress=False)
    with pytest.raises(ValueError, match="factor"):
        CL.output_rate_allocation(model, prune_per_round=0.5, factor=2.0)
    with pytest.raises(ValueError, match="accepted"):
        D.load_labelled("imagenet")


def test_bench_summary_finds_where_the_ticket_keeps_dense_accuracy():
    from lthdiff.bench.classic import summarize

    acc = {  # (round, variant) -> accuracy of seeds 0 and 1
        (0, "ticket"): (0.90, 0.90),
        (1, "ticket"): (0.91, 0.91), (1, "random_reinit"): (0.80, 0.82), (1, "random_mask"): (0.90, 0.88),
        (2, "ticket"): (0.89, 0.89), (2, "random_reinit"): (0.70, 0.70), (2, "random_mask"): (0.60, 0.60),
        (3, "ticket"): (0.95, 0.95), (3, "random_reinit"): (0.70, 0.70), (3, "random_mask"): (0.60, 0.60),
    }
    remaining = {0: 1.0, 1: 0.8, 2: 0.64, 3: 0.512}
    rows = [{"seed": s, "round": r, "variant": v, "sparsity": 1 - remaining[r], "remaining": remaining[r],
             "accuracy": a[s]} for (r, v), a in acc.items() for s in (0, 1)]
    table, f = summarize(rows)
    assert [t["round"] for t in table] == [0, 1, 2, 3]
    assert f["threshold_%"] == pytest.approx(89.5)  # dense std is 0, so the 0.5 pt floor applies
    # round 2 falls below the threshold, so round 3's recovery does not count
    assert f["ticket_keeps_dense_round"] == 1 and f["ticket_keeps_dense_down_to_remaining_%"] == pytest.approx(80)
    assert f["random_reinit_keeps_dense_down_to_remaining_%"] == pytest.approx(100)
    assert f["gap_to_random_reinit_pt"]["mean"] == pytest.approx(10)
    assert f["gap_to_random_reinit_pt"]["std"] == pytest.approx(math.sqrt(2))
    assert f["best_ticket"]["round"] == 3
