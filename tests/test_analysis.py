import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from lthdiff.evaluation import analysis as A
from lthdiff import masks as M
from lthdiff.lottery import run_imp
from lthdiff.models import unet

KW = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_digits):
    """Three IMP runs of one initialisation: seeds 0, 0 (a repeat) and 1 (another data order)."""
    out = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        d = tmp_path_factory.mktemp(f"run_{name}")
        run_imp(unet("tiny", seed=0, **KW), small_digits, rounds=2, steps_per_round=2, prune_per_round=0.5,
                batch_size=16, run_dir=d, controls=(), progress=False, seed=seed)
        out.append(d)
    return out


def _random_mask(density, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.rand(n, generator=g) < density}


def test_identical_masks_similarity_one_disjoint_zero():
    m = _random_mask(0.4)
    same = A.mask_similarity([m, {"w": m["w"].clone()}], by="layer")
    assert same.loc["w", "jaccard"] == 1.0 and same.loc["w", "hamming"] == 0.0
    apart = A.mask_similarity([m, {"w": ~m["w"]}], by="layer")
    assert apart.loc["w", "jaccard"] == 0.0 and apart.loc["w", "hamming"] == 1.0


def test_chance_jaccard_matches_independent_random_masks():
    a, b = _random_mask(0.3, seed=1), _random_mask(0.6, seed=2)
    measured = A.mask_similarity([a, b], by="layer").loc["w"]
    assert abs(measured["jaccard"] - A.chance_jaccard(0.3, 0.6)) < 0.005
    assert abs(measured["chance_jaccard"] - A.chance_jaccard(0.3, 0.6)) < 0.005


def test_cka_identity_invariances_and_unrelated():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    other = torch.randn(64, 8, generator=g)
    for kernel in ("linear", "rbf"):
        assert A.cka(x, x, kernel) == pytest.approx(1.0, abs=1e-9)
        # CKA is invariant to orthogonal transforms and isotropic scaling (Kornblith et al. 2019, Sec. 3)
        assert A.cka(x, 3.0 * x @ q, kernel) == pytest.approx(1.0, abs=1e-6)
        assert A.cka(x, other, kernel) < 0.5
    with pytest.raises(ValueError, match="kernel"):
        A.cka(x, x, "cosine")


def test_similarity_and_sparsity_tables_over_runs(runs):
    sim = A.similarity_table(runs, by="block")
    assert set(sim["round"]) == {0, 1, 2} and len(set(zip(sim["run_a"], sim["run_b"]))) == 3
    same_seed = sim[sim["run_a"].str.contains("seed 0") & sim["run_b"].str.contains("seed 0")]
    assert (same_seed["jaccard"] == 1.0).all()  # same seed, same data order -> the same ticket
    dense = sim[sim["round"] == 0]
    assert (dense["jaccard"] == 1.0).all() and (dense["chance_jaccard"] == 1.0).all()
    other = sim[(sim["round"] == 2) & sim["run_b"].str.contains("seed 1")]
    assert (other["jaccard"] < 1.0).any()
    # units run input side first: the mid block before the up blocks
    units = list(dict.fromkeys(sim["unit"]))
    assert units.index("mid_block.resnets") < units.index("up_blocks.0.resnets")

    sp = A.sparsity_table(runs, by="block")
    r2 = sp[(sp["round"] == 2) & sp["run"].str.contains("run_c")]
    assert r2["pruned"].sum() / r2["total"].sum() == pytest.approx(0.75, abs=1e-4)
    mask = M.load(runs[2] / "round_02" / "mask.safetensors")[0]
    rep = M.report(mask, by="block").set_index("block")["sparsity"]
    assert dict(zip(r2["unit"], r2["sparsity"])) == pytest.approx(rep.to_dict())


def test_cka_table_and_heatmaps(runs):
    ck = A.cka_table(runs[1:], by="block")  # seeds 0 and 1
    assert set(ck["round"]) == {0, 1, 2} and ck["cka"].between(0, 1).all()
    mat = A.pivot(ck, "cka")
    assert list(mat.columns) == [0, 1, 2] and mat.index[0] == "time_embedding"
    sim = A.similarity_table(runs, by="layer")
    fig = A.heatmap(sim, "jaccard", title="overlap")
    assert fig.axes[0].get_title() == "overlap"
    pfig = A.heatmap(A.sparsity_table(runs, by="block"), "sparsity", backend="plotly")
    assert pfig.data[0].z.shape[1] == 3
    with pytest.raises(ValueError, match="accepted"):
        A.heatmap(sim, "nope")
    with pytest.raises(ValueError, match="at least two"):
        A.similarity_table(runs[:1])
