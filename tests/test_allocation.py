import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.lottery import run_imp
from lthdiff.models import unet
from lthdiff.pruners.allocation import RULES, allocate, jiang2023_schedule, parse_rule, unit_order

KW = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
MODEL = unet("tiny", seed=0, **KW)  # read-only here: allocation never changes the model
NAMES = M.prunable(MODEL)
NUMEL = {n: p.numel() for n, p in MODEL.named_parameters() if n in NAMES}
N = sum(NUMEL.values())
ALL_RULES = list(RULES) + ['jiang2023(unit="layer")', "erk(power=0.5)"]


def _pruned(alloc):
    return {n: round(s * NUMEL[n]) for n, s in alloc.items()}


def _check(alloc, target, prior=None):
    assert set(alloc) == set(NAMES)
    assert all(0 <= s < 1 for s in alloc.values())
    counts = _pruned(alloc)
    assert sum(counts.values()) == round(target * N)  # exact overall count
    if prior is not None:  # never below what the mask already prunes
        assert all(counts[n] >= int((~prior[n]).sum()) for n in NAMES)
    mask = pruners.magnitude(MODEL, target, scope="layer", mask=prior, layer_sparsity=alloc)
    assert sum(int((~m).sum()) for m in mask.values()) == round(target * N)
    if prior is not None:
        assert all(torch.all(mask[n] <= prior[n]) for n in NAMES)  # nested, as IMP needs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=st.sampled_from(ALL_RULES), target=st.floats(0.0, 0.995), prior_frac=st.floats(0.0, 1.0))
def test_every_rule_hits_target_exactly_within_bounds(rule, target, prior_frac):
    prior = None
    if prior_frac > 0.05:  # an earlier IMP round: global ranking, one weight kept per layer
        t0 = target * prior_frac
        prior = pruners.magnitude(MODEL, t0, scope="layer", layer_sparsity=allocate("global", MODEL, t0))
    _check(allocate(rule, MODEL, target, mask=prior), target, prior)


def test_uniform_is_flat_and_global_matches_global_magnitude():
    uni = _pruned(allocate("uniform", MODEL, 0.6))
    assert all(abs(c - 0.6 * NUMEL[n]) <= 1 for n, c in uni.items())
    glob = allocate("global", MODEL, 0.6)
    ref = pruners.magnitude(MODEL, 0.6, scope="global")
    assert _pruned(glob) == {n: int((~m).sum()) for n, m in ref.items()}


def test_global_keeps_one_weight_per_layer_where_plain_global_ranking_empties_layers():
    ref = pruners.magnitude(MODEL, 0.99, scope="global")
    assert any(int(m.sum()) == 0 for m in ref.values())  # the situation the cap exists for
    glob = _pruned(allocate("global", MODEL, 0.99))
    assert all(c < NUMEL[n] for n, c in glob.items())


def test_erk_density_proportional_to_kernel_score_with_dense_cap():
    # Evci et al. 2020: density ~ (n_in + n_out + kh + kw) / (n_in n_out kh kw); small layers capped at dense.
    alloc = allocate("erk", MODEL, 0.5)
    params = dict(MODEL.named_parameters())
    score = {n: sum(params[n].shape) / params[n].numel() for n in NAMES}
    dense = [n for n in NAMES if alloc[n] == 0]
    assert dense and len(dense) < len(NAMES)
    eps = {n: (1 - alloc[n]) / score[n] for n in NAMES if alloc[n] > 0}
    lo, hi = min(eps.values()), max(eps.values())
    assert (hi - lo) / hi < 0.05  # one scale factor for every non-capped layer (up to rounding)
    assert all(1 / score[n] <= hi * 1.05 for n in dense)  # capped layers are those whose ERK density would be >= 1


def test_jiang2023_ratio_grows_by_q_per_module_in_forward_order():
    q = 0.02
    alloc = _pruned(allocate(f"jiang2023(q={q})", MODEL, 0.5))
    groups = unit_order(MODEL, NAMES, "block")
    ratios = [sum(alloc[n] for n in g) / sum(NUMEL[n] for n in g) for g in groups]
    steps = np.diff(ratios)
    sizes = [sum(NUMEL[n] for n in g) for g in groups]
    tol = [1.0 / a + 1.0 / b for a, b in zip(sizes, sizes[1:])]  # integer rounding of each module
    assert all(abs(s - q) <= t + 1e-9 for s, t in zip(steps, tol))
    # upstream first: the UNet's mid block comes before its up blocks although diffusers registers it last
    blocks = [M.block_of(g[0]) for g in groups]
    assert blocks.index("mid_block.resnets") < blocks.index("up_blocks.0.resnets")


def test_jiang2023_schedule_recovers_the_papers_fixed_per_round_ratio():
    """Alg. 1 prunes p + j*q of each module's survivors per round; with the schedule it implies, the
    solved p is the paper's p in every round."""
    p, q, rounds = 0.2, 0.01, 3
    schedule = jiang2023_schedule(MODEL, rounds, p=p, q=q)
    groups = unit_order(MODEL, NAMES, "block")
    mask = M.ones(MODEL)
    for target in schedule:
        alive = [sum(int(mask[n].sum()) for n in g) for g in groups]
        alloc = allocate(f"jiang2023(q={q})", MODEL, target, mask=mask)
        mask = pruners.magnitude(MODEL, target, scope="layer", mask=mask, layer_sparsity=alloc)
        now = [sum(int(mask[n].sum()) for n in g) for g in groups]
        for j, (a, b) in enumerate(zip(alive, now)):
            assert abs((a - b) / a - (p + j * q)) <= 2.0 / a + 1e-9


def test_similarity_order_prunes_most_similar_unit_least():
    blocks = list(dict.fromkeys(M.block_of(n) for n in NAMES))
    sim = {b: i / len(blocks) for i, b in enumerate(blocks)}  # last block most similar
    alloc = _pruned(allocate("jiang2023", MODEL, 0.5, order="similarity", similarity=sim, q=0.05))
    ratio = {b: sum(alloc[n] for n in NAMES if M.block_of(n) == b) /
             sum(NUMEL[n] for n in NAMES if M.block_of(n) == b) for b in blocks}
    assert ratio[blocks[-1]] == min(ratio.values()) and ratio[blocks[0]] == max(ratio.values())
    with pytest.raises(ValueError, match="reference_masks"):
        allocate("jiang2023", MODEL, 0.5, order="similarity")


def test_overrides_pin_matching_layers_and_keep_total():
    alloc = allocate("erk", MODEL, 0.8, overrides={"*attentions*": 0.5})
    att = [n for n in NAMES if "attentions" in n]
    assert att and all(abs(alloc[n] * NUMEL[n] - 0.5 * NUMEL[n]) <= 1 for n in att)
    _check(alloc, 0.8)
    with pytest.raises(ValueError, match="match no eligible layer"):
        allocate("uniform", MODEL, 0.5, overrides={"*nope*": 0.1})
    with pytest.raises(ValueError, match="'uniform'.*0.99"):  # the rest cannot absorb enough
        allocate("uniform", MODEL, 0.99, overrides={"*conv*": 0.0})


@pytest.mark.parametrize("rule", RULES)
def test_infeasible_requests_name_rule_and_target(rule):
    with pytest.raises(ValueError, match=f"'{rule}'.*1.0|'{rule}'.*\\[0, 1\\)"):
        allocate(rule, MODEL, 1.0)
    with pytest.raises(ValueError, match=f"'{rule}'.*0.99999"):  # more than one-weight-per-layer allows
        allocate(rule, MODEL, 0.99999)
    prior = pruners.magnitude(MODEL, 0.7, scope="layer", layer_sparsity=allocate("uniform", MODEL, 0.7))
    with pytest.raises(ValueError, match=f"'{rule}'.*0.3.*already"):
        allocate(rule, MODEL, 0.3, mask=prior)


def test_mask_that_emptied_a_layer_is_refused_clearly():
    prior = pruners.magnitude(MODEL, 0.99, scope="global")
    with pytest.raises(ValueError, match="every weight of"):
        allocate("uniform", MODEL, 0.995, mask=prior)


def test_rule_strings_parse_safely():
    assert parse_rule("jiang2023(q=0.02, unit='layer')") == ("jiang2023", {"q": 0.02, "unit": "layer"})
    for bad in ["jiang2023(q=__import__('os'))", "nope", "erk(1)", "os.system('x')"]:
        with pytest.raises(ValueError):
            parse_rule(bad)
    with pytest.raises(ValueError, match="unknown options"):
        allocate("erk(q=1)", MODEL, 0.5)


def test_run_imp_takes_one_rule_per_round(tmp_path, small_digits):
    res = run_imp(unet("tiny", seed=0, **KW), small_digits, rounds=2, steps_per_round=2, prune_per_round=0.5,
                  batch_size=16, run_dir=tmp_path, controls=(), progress=False,
                  allocation=["uniform", "jiang2023(q=0.05)"])
    r1, r2 = res.rounds[1].load_mask(), res.rounds[2].load_mask()
    assert all(abs(int((~r1[n]).sum()) - 0.5 * NUMEL[n]) <= 1 for n in NAMES)  # round 1: uniform
    assert sum(int((~m).sum()) for m in r2.values()) == round(0.75 * N)
    # round 2: module j loses p + j*q of its survivors, so block sparsity rises towards the output
    groups = unit_order(MODEL, NAMES, "block")
    sp = [sum(int((~r2[n]).sum()) for n in g) / sum(NUMEL[n] for n in g) for g in groups]
    tol = max(2.0 / sum(NUMEL[n] for n in g) for g in groups)
    assert all(b >= a - tol for a, b in zip(sp, sp[1:])) and sp[-1] - sp[0] > 0.25
