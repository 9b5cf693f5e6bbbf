"""N:M (2:4) magnitude pruning, masks.check_nm, run_imp(pattern=) and the 2:4 conversion's CPU message."""
import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.lottery import run_imp
from lthdiff.models import unet


def _tiny():
    return unet("tiny", seed=0)


def _prune(model, sparsity, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # conv_in (1 input channel) is skipped with a warning
        return pruners.magnitude(model, sparsity, pattern="2:4", **kw)


def _groups_loop(shape, m):
    """Reference grouping by explicit loops: lists of flat indices, M consecutive input entries each."""
    out_f, in_f, *k = shape
    strides = torch.tensor(range(torch.Size(shape).numel())).reshape(shape)
    groups = []
    for o in range(out_f):
        for pos in itertools.product(*[range(s) for s in k]):
            for g in range(in_f // m):
                groups.append([int(strides[(o, g * m + j, *pos)]) for j in range(m)])
    return groups


def test_every_group_of_four_keeps_exactly_two_at_half():
    model = _tiny()
    with pytest.warns(UserWarning, match="conv_in.weight"):
        mask = pruners.magnitude(model, 0.5, pattern="2:4")
    params = dict(model.named_parameters())
    assert torch.all(mask["conv_in.weight"])  # 1 input channel: skipped, left dense
    checked = 0
    for name, m in mask.items():
        if name == "conv_in.weight":
            continue
        kept = M.nm_groups(m, 4)
        assert torch.all(kept.sum(dim=1) == 2), name
        a = M.nm_groups(params[name].detach().abs(), 4)
        # the kept two are the largest |w| of their group
        assert torch.all(a.masked_fill(~kept, float("inf")).min(dim=1).values
                         >= a.masked_fill(kept, float("-inf")).max(dim=1).values), name
        checked += 1
    assert checked == len(mask) - 1
    M.check_nm(mask, 2, 4)


def test_grouping_is_along_input_channels_at_fixed_out_kh_kw():
    w = torch.arange(2 * 8 * 3 * 3).reshape(2, 8, 3, 3)
    g = M.nm_groups(w, 4)
    ref = _groups_loop(w.shape, 4)
    flat = w.reshape(-1)
    assert sorted(map(tuple, g.tolist())) == sorted(tuple(int(flat[i]) for i in grp) for grp in ref)
    assert torch.equal(M.nm_ungroup(g, w.shape), w)


@pytest.mark.parametrize("sparsity", [0.6, 0.8, 0.93])
def test_higher_sparsity_exact_count_keeps_pattern(sparsity):
    model = _tiny()
    half, mask = _prune(model, 0.5), _prune(model, sparsity)
    eligible = [n for n in mask if n != "conv_in.weight"]
    n_total = sum(mask[n].numel() for n in eligible)
    assert sum(int((~mask[n]).sum()) for n in eligible) == round(sparsity * n_total)
    assert torch.all(mask["conv_in.weight"])
    M.check_nm(mask, 2, 4)
    assert all(torch.all(mask[n] <= half[n]) for n in mask)  # extra pruning only removes pattern survivors
    # ... and removes the globally smallest of them
    params = dict(model.named_parameters())
    extra = torch.cat([params[n].detach().abs()[half[n] & ~mask[n]] for n in eligible])
    kept = torch.cat([params[n].detach().abs()[mask[n]] for n in eligible])
    assert extra.max() <= kept.min()


def test_nested_rounds_keep_pattern_and_subset():
    model = _tiny()
    m1 = _prune(model, 0.5)
    torch.manual_seed(1)
    with torch.no_grad():  # "training" between rounds changes the weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m2 = _prune(model, 0.75, mask=m1)
    assert all(torch.all(m2[n] <= m1[n]) for n in m1)
    M.check_nm(m2, 2, 4)
    n_total = sum(m.numel() for n, m in m2.items() if n != "conv_in.weight")
    assert sum(int((~m).sum()) for n, m in m2.items() if n != "conv_in.weight") == round(0.75 * n_total)


def test_prior_unstructured_mask_is_respected():
    model = _tiny()
    prior = pruners.random(model, 0.3, seed=3)
    mask = _prune(model, 0.6, mask=prior)
    assert all(torch.all(mask[n] <= prior[n]) for n in prior)
    assert torch.equal(mask["conv_in.weight"], prior["conv_in.weight"])  # skipped layer keeps its prior mask
    M.check_nm(mask, 2, 4)


def test_sparsity_below_pattern_raises():
    with pytest.raises(ValueError, match=r"below what the 2:4 pattern.*at least 1 - 2/4"):
        _prune(_tiny(), 0.3)


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "2:2", "a:b", "2:4:8", "", 24, (2, 4)])
def test_bad_pattern_rejected(bad):
    with pytest.raises(ValueError, match="N:M"):
        pruners.magnitude(_tiny(), 0.5, pattern=bad)


def test_pattern_with_layer_scope_rejected():
    with pytest.raises(ValueError, match="scope='global'"):
        pruners.magnitude(_tiny(), 0.5, pattern="2:4", scope="layer")


def test_deterministic():
    a, b = _prune(_tiny(), 0.7), _prune(_tiny(), 0.7)
    assert all(torch.equal(a[n], b[n]) for n in a)


@settings(max_examples=40, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8)]), out_f=st.integers(1, 3),
       groups=st.integers(1, 3), k=st.sampled_from([None, 1, 2]), levels=st.integers(1, 3),
       seed=st.integers(0, 10_000))
def test_matches_brute_force_with_ties(nm, out_f, groups, k, levels, seed):
    n, m = nm
    in_f = groups * m
    layer = nn.Linear(in_f, out_f, bias=False) if k is None else nn.Conv2d(in_f, out_f, k, bias=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # few distinct magnitudes: many ties
        layer.weight.copy_(torch.randint(-levels, levels + 1, layer.weight.shape, generator=g).float())
    mask = pruners.magnitude(layer, 1 - n / m, pattern=f"{n}:{m}")["weight"]
    flat_w, flat_m = layer.weight.detach().abs().reshape(-1), mask.reshape(-1)
    for grp in _groups_loop(layer.weight.shape, m):
        best = sorted(grp, key=lambda i: (-float(flat_w[i]), i))[:n]  # largest |w|, lower index on ties
        assert [bool(flat_m[i]) for i in grp] == [i in best for i in grp]


def test_check_nm_names_violating_layer():
    mask = {"a.weight": torch.ones(2, 8, dtype=torch.bool), "b.weight": torch.tensor([[True, False, True, False]])}
    assert M.nm_violations(mask, 2, 4) == {"a.weight": 4, "b.weight": 0}
    with pytest.raises(ValueError, match=r"a\.weight \(4 groups keep > 2\)"):
        M.check_nm(mask, 2, 4)
    M.check_nm({"b.weight": mask["b.weight"]}, 2, 4)


def test_run_imp_keeps_pattern_every_round(tmp_path, small_digits):
    model = unet("tiny", seed=0, block_out_channels=(8, 16, 16), norm_num_groups=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = run_imp(model, small_digits, rounds=2, steps_per_round=2, prune_per_round=0.5, batch_size=16,
                      run_dir=tmp_path, progress=False, pattern="2:4", controls=("random_reinit", "one_shot"))
    assert res.config["pattern"] == "2:4"
    for r in res.rounds[1:]:
        mask = r.load_mask()
        M.check_nm(mask, 2, 4)
        M.check_nm(r.controls["one_shot"].load_mask(), 2, 4)
        assert all(torch.equal(mask[n], r.controls["random_reinit"].load_mask()[n]) for n in mask)
    n_groups = sum(m.numel() // 4 for n, m in res.rounds[1].load_mask().items() if M.nm_eligible(m.shape, 4))
    kept1 = sum(int(m.sum()) for n, m in res.rounds[1].load_mask().items() if M.nm_eligible(m.shape, 4))
    assert kept1 == 2 * n_groups  # round 1 at 50 %: exactly 2 of 4 everywhere


def test_run_imp_rejects_bad_pattern(tmp_path, small_digits):
    with pytest.raises(ValueError, match="N:M"):
        run_imp(unet("tiny", seed=0), small_digits, rounds=1, steps_per_round=2, run_dir=tmp_path, pattern="2/4")
    with pytest.raises(ValueError, match="allocation"):
        run_imp(unet("tiny", seed=0), small_digits, rounds=1, steps_per_round=2, run_dir=tmp_path,
                pattern="2:4", allocation="erk")


def test_semi_structured_says_it_needs_a_gpu():
    from lthdiff.pruners.semi_structured import is_24, to_semi_structured, unavailable_reason

    assert is_24(torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]]))
    assert not is_24(torch.tensor([[1.0, 1, 2, 0]]))
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        pytest.skip("an sm80+ GPU is present: the CPU message does not apply")
    assert "sm80" in unavailable_reason()
    with pytest.raises(RuntimeError, match="CUDA GPU with compute capability >= 8.0"):
        to_semi_structured(nn.Linear(64, 64))


def test_sparse24_bench_exits_with_message_on_cpu(capsys):
    from lthdiff.bench import sparse24

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert sparse24.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
