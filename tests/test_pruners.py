import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from lthdiff import masks as M
from lthdiff.pruners import magnitude, random
from lthdiff.pruners.unstructured import random_like


@pytest.fixture(scope="module")
def tiny():
    from lthdiff.models import unet

    return unet("tiny", seed=0)


def pruned_count(mask) -> int:
    kept, total = M.count(mask)
    return total - kept


def is_subset(child, parent) -> bool:
    return set(child) == set(parent) and all(not (child[k] & ~parent[k]).any() for k in parent)


# ---------------------------------------------------------------- exact counts


@pytest.mark.parametrize("s", [0.0, 0.2, 0.5, 0.9, 0.999])
def test_global_magnitude_prunes_exactly_round_s_n(tiny, s):
    mask = magnitude(tiny, s)
    n = sum(m.numel() for m in mask.values())
    assert list(mask) == M.prunable(tiny) and pruned_count(mask) == round(s * n)
    params = dict(tiny.named_parameters())
    pruned = torch.cat([params[k].detach().abs()[~m] for k, m in mask.items()])
    kept = torch.cat([params[k].detach().abs()[m] for k, m in mask.items()])
    if len(pruned):
        assert pruned.max() <= kept.min()  # the smallest magnitudes went


@pytest.mark.parametrize("pruner", [magnitude, random])
def test_layer_scope_prunes_each_layer_exactly(tiny, pruner):
    mask = pruner(tiny, 0.37, scope="layer")
    for name, m in mask.items():
        assert (~m).sum() == round(0.37 * m.numel()), name


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_layer_sparsity_overrides(tiny, scope):
    fixed = {"conv_in.weight": 0.0, "down_blocks.1.attentions.0.to_q.weight": 0.75}
    mask = magnitude(tiny, 0.5, scope=scope, layer_sparsity=fixed)
    for name, s in fixed.items():
        assert (~mask[name]).sum() == round(s * mask[name].numel())
    if scope == "global":
        assert pruned_count(mask) == round(0.5 * M.count(mask)[1])
    else:
        others = [k for k in mask if k not in fixed]
        assert all((~mask[k]).sum() == round(0.5 * mask[k].numel()) for k in others)


def test_infeasible_layer_sparsity_is_an_error(tiny):
    big = {n: 0.99 for n in M.prunable(tiny)[:-1]}  # all but conv_out, nearly empty
    with pytest.raises(ValueError, match="layer_sparsity"):
        magnitude(tiny, 0.1, layer_sparsity=big)
    with pytest.raises(ValueError, match="'nope.weight'"):
        magnitude(tiny, 0.1, layer_sparsity={"nope.weight": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        magnitude(tiny, 0.1, layer_sparsity={"conv_in.weight": 1.5})


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
       s=st.floats(0, 0.999), scope=st.sampled_from(["global", "layer"]), seed=st.integers(0, 3))
def test_property_exact_counts(sizes, s, scope, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(i, o) for i, o in sizes])
    for pruner in (magnitude, random):
        mask = pruner(model, s, scope=scope)
        if scope == "global":
            assert pruned_count(mask) == round(s * M.count(mask)[1])
        else:
            assert all((~m).sum() == round(s * m.numel()) for m in mask.values())


# ---------------------------------------------------------------- successive rounds


@pytest.mark.parametrize("pruner, scope", [(magnitude, "global"), (magnitude, "layer"), (random, "layer"),
                                           (random, "global")])
def test_successive_rounds_are_nested(tiny, pruner, scope):
    mask, total = None, sum(p.numel() for n, p in tiny.named_parameters() if n in M.prunable(tiny))
    for r in range(1, 5):
        target = 1 - 0.8 ** r  # 0.2, 0.36, 0.488, 0.5904
        new = pruner(tiny, target, scope=scope, mask=mask)
        if scope == "global":
            assert pruned_count(new) == round(target * total)
        if mask is not None:
            assert is_subset(new, mask)
        mask = new


def test_magnitude_on_a_pruned_model_keeps_pruned_weights_pruned(tiny):
    import copy

    model = copy.deepcopy(tiny)
    first = magnitude(model, 0.5)
    M.apply(model, first)
    with torch.no_grad():  # retraining moved the survivors; now some are smaller than the zeros' old values
        for p in model.parameters():
            p.mul_(0.01)
    second = magnitude(model, 0.6, mask=first)
    assert is_subset(second, first) and M.sparsity(second) == pytest.approx(0.6, abs=1e-5)


def test_mask_pruning_more_than_requested_is_an_error(tiny):
    mask = magnitude(tiny, 0.5)
    with pytest.raises(ValueError, match="already prunes.*0.3"):
        magnitude(tiny, 0.3, mask=mask)
    with pytest.raises(ValueError, match="already prunes"):
        magnitude(tiny, 0.3, mask=mask, scope="layer")
    assert all(torch.equal(a, b) for a, b in zip(magnitude(tiny, 0.5, mask=mask).values(), mask.values()))


# ---------------------------------------------------------------- agreement, ties, determinism


@pytest.mark.parametrize("s", [0.2, 0.488, 0.9])
def test_global_magnitude_matches_torch_global_unstructured(tiny, s):
    import copy

    model = copy.deepcopy(tiny)
    names = M.prunable(model)
    modules = dict(model.named_modules())
    flat = torch.cat([p.detach().abs().flatten() for n, p in model.named_parameters() if n in names]).sort().values
    k = round(s * flat.numel())
    assert flat[k - 1] < flat[k]  # no tie across the cut, so the selection is unique
    ours = magnitude(model, s)
    prune.global_unstructured([(modules[n.rpartition(".")[0]], "weight") for n in names],
                              pruning_method=prune.L1Unstructured, amount=s)
    theirs = M.from_torch_prune(model)
    assert list(theirs) == list(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_broken_by_flat_index(scope):
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    mask = magnitude(model, 0.5, scope=scope)
    flat = torch.cat([m.flatten() for m in mask.values()])
    if scope == "global":  # the first 6 of 12 equal weights, in model order
        assert flat.tolist() == [False] * 6 + [True] * 6
    else:
        assert flat.tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3
    again = magnitude(model, 0.5, scope=scope)
    assert all(torch.equal(mask[k], again[k]) for k in mask)


def test_random_is_deterministic_per_seed(tiny):
    a, b, c = random(tiny, 0.5, seed=1), random(tiny, 0.5, seed=1), random(tiny, 0.5, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_random_like_keeps_each_layers_count(tiny):
    ticket = magnitude(tiny, 0.7)
    control = random_like(ticket, seed=3)
    assert list(control) == list(ticket)
    assert all((~control[k]).sum() == (~ticket[k]).sum() for k in ticket)
    assert M.similarity(ticket, control, by="overall")["jaccard"].iloc[0] < 0.99
    via_report = random(tiny, 0.7, layer_sparsity=M.report(ticket), seed=3)
    assert all((~via_report[k]).sum() == (~ticket[k]).sum() for k in ticket)
    assert all(torch.equal(x, y) for x, y in zip(random_like(ticket, seed=3).values(), control.values()))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("pruner", [magnitude, random])
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, True, "0.5"])
def test_bad_sparsity(tiny, pruner, bad):
    with pytest.raises(ValueError, match=r"\[0, 1\).*" + (repr(bad) if isinstance(bad, str) else "")):
        pruner(tiny, bad)


@pytest.mark.parametrize("pruner", [magnitude, random])
def test_no_eligible_parameters(pruner):
    with pytest.raises(ValueError, match="no parameters eligible"):
        pruner(nn.Sequential(nn.LayerNorm(4), nn.ReLU()), 0.5)


def test_pruners_validate_mask_and_scope(tiny):
    mask = M.ones(tiny)
    mask["conv_in.weight"] = mask["conv_in.weight"][:1]
    with pytest.raises(ValueError, match="conv_in.weight"):
        magnitude(tiny, 0.5, mask=mask)
    with pytest.raises(ValueError, match="'local'.*accepted"):
        magnitude(tiny, 0.5, scope="local")


def test_include_exclude_select_eligible_weights(tiny):
    mask = magnitude(tiny, 0.5, exclude=["conv_in.weight", "conv_out.weight"])
    assert "conv_in.weight" not in mask and "conv_out.weight" not in mask
    with pytest.raises(ValueError, match="mask's keys"):
        magnitude(tiny, 0.6, mask=M.ones(tiny), exclude="conv_in.weight")
