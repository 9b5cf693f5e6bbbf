import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lthdiff import masks as M
from lthdiff.store import CorruptFileError


def seq() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Linear(10, 7), nn.Embedding(5, 3),
                         nn.Linear(7, 3))


@pytest.fixture(scope="module")
def tiny():
    from lthdiff.models import unet

    return unet("tiny", seed=0)


def half_mask(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()
            if n in M.prunable(model)}


# ---------------------------------------------------------------- prunable / ones / apply


def test_prunable_default_is_conv_and_linear_weights_in_model_order():
    assert M.prunable(seq()) == ["0.weight", "2.weight", "4.weight"]


def test_prunable_unet_skips_biases_norms_and_counts_subclasses(tiny):
    names = M.prunable(tiny)
    assert names[0] == "conv_in.weight" and names[-1] == "conv_out.weight"
    assert "down_blocks.1.attentions.0.to_q.weight" in names
    assert all(n.endswith(".weight") and "norm" not in n for n in names)
    order = [n for n, _ in tiny.named_parameters()]
    assert names == [n for n in order if n in set(names)]

    class LoRAConv(nn.Conv2d):  # diffusers' LoRACompatibleConv is such a subclass
        pass

    assert M.prunable(nn.Sequential(LoRAConv(1, 2, 1))) == ["0.weight"]


def test_prunable_include_exclude(tiny):
    base = M.prunable(tiny)
    kept = M.prunable(tiny, exclude=["conv_in.weight", "conv_out.weight"])
    assert kept == [n for n in base if n not in ("conv_in.weight", "conv_out.weight")]
    assert M.prunable(seq(), include=["*.bias"]) == ["0.weight", "0.bias", "1.bias", "2.weight", "2.bias",
                                                      "4.weight", "4.bias"]
    assert M.prunable(seq(), include="1.*", exclude="*.bias") == ["0.weight", "1.weight", "2.weight", "4.weight"]
    with pytest.raises(ValueError, match="conv_in.weights"):
        M.prunable(tiny, exclude=["conv_in.weights"])


def test_ones_and_apply_zero_exactly_the_pruned_weights():
    model = seq()
    mask = M.ones(model)
    assert list(mask) == M.prunable(model) and all(m.all() for m in mask.values())
    assert M.sparsity(mask) == 0.0 and M.sparsity(model) == 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = half_mask(model)
    M.apply(model, mask)
    params = dict(model.named_parameters())
    for n, m in mask.items():
        assert torch.all(params[n][~m] == 0)
        assert torch.equal(params[n][m], before[n][m])
    assert torch.equal(params["0.bias"], before["0.bias"])
    assert M.sparsity(model) == pytest.approx(M.sparsity(mask))
    kept, total = M.count(mask)
    assert total == sum(params[n].numel() for n in mask) and M.sparsity(mask) == (total - kept) / total


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize("fn", [M.validate, M.apply])
def test_validate_errors_name_the_parameter(fn):
    model = seq()
    before = model[0].weight.detach().clone()
    good = half_mask(model)
    with pytest.raises(ValueError, match=r"'9\.weight'"):
        fn(model, {**good, "9.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'2\.weight'.*\(7, 9\).*\(7, 10\)"):
        fn(model, {**good, "2.weight": torch.ones(7, 9, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'4\.weight'.*float32"):
        fn(model, {**good, "4.weight": torch.ones(3, 7)})
    with pytest.raises(ValueError, match="mapping"):
        fn(model, [good["0.weight"]])
    assert torch.equal(model[0].weight, before)  # a rejected mask changes nothing


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize("name, block, stage, kind", [
    ("down_blocks.0.resnets.0.conv1.weight", "down_blocks.0.resnets", "down", "resnet"),
    ("down_blocks.1.attentions.0.to_q.weight", "down_blocks.1.attentions", "down", "attention"),
    ("down_blocks.0.downsamplers.0.conv.weight", "down_blocks.0.downsamplers", "down", "sampler"),
    ("mid_block.resnets.1.conv2.weight", "mid_block.resnets", "mid", "resnet"),
    ("mid_block.attentions.0.to_out.0.weight", "mid_block.attentions", "mid", "attention"),
    ("up_blocks.2.upsamplers.0.conv.weight", "up_blocks.2.upsamplers", "up", "sampler"),
    ("conv_in.weight", "conv_in", "other", "other"),
    ("conv_out.weight", "conv_out", "other", "other"),
    ("time_embedding.linear_1.weight", "time_embedding", "other", "other"),
    ("layer1.0.conv1.weight", "layer1.0", "other", "other"),  # classifier: parent of the module
    ("fc.weight", "fc", "other", "other"),
])
def test_block_stage_kind(name, block, stage, kind):
    assert (M.block_of(name), M.stage_of(name), M.kind_of(name)) == (block, stage, kind)


def test_every_unet_parameter_has_a_block(tiny):
    blocks = {M.block_of(n) for n, _ in tiny.named_parameters()}
    assert {"conv_in", "conv_out", "time_embedding", "mid_block.resnets", "mid_block.attentions",
            "down_blocks.1.attentions", "up_blocks.1.upsamplers"} <= blocks
    assert all(b.split(".")[0] in ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out",
                                   "conv_norm_out", "time_embedding") for b in blocks)


# ---------------------------------------------------------------- report / similarity


@pytest.mark.parametrize("by", ["layer", "block", "stage", "kind"])
def test_report_sums_are_consistent(tiny, by):
    mask = half_mask(tiny)
    rep = M.report(mask, by=by)
    kept, total = M.count(mask)
    assert rep["kept"].sum() == kept and rep["total"].sum() == total
    assert (rep["kept"] + rep["pruned"] == rep["total"]).all()
    assert rep["sparsity"].tolist() == pytest.approx((rep["pruned"] / rep["total"]).tolist())
    assert rep[by].is_unique
    if by == "layer":
        assert rep["layer"].tolist() == list(mask)
    if by == "block":
        assert rep["block"].iloc[0] == "conv_in" and rep["layers"].sum() == len(mask)


def test_report_rejects_unknown_grouping():
    with pytest.raises(ValueError, match="'layers'.*accepted"):
        M.report(M.ones(seq()), by="layers")


@pytest.mark.parametrize("by", ["layer", "block", "overall"])
def test_similarity_identical_and_disjoint(tiny, by):
    a = half_mask(tiny)
    same = M.similarity(a, {k: v.clone() for k, v in a.items()}, by=by)
    assert (same["jaccard"] == 1.0).all() and (same["hamming"] == 0.0).all()
    opposite = M.similarity(a, {k: ~v for k, v in a.items()}, by=by)
    assert (opposite["jaccard"] == 0.0).all() and (opposite["hamming"] == 1.0).all()
    if by == "overall":
        assert len(same) == 1


def test_similarity_values_by_hand():
    a = {"x.weight": torch.tensor([True, True, False, False]), "y.weight": torch.zeros(2, dtype=torch.bool)}
    b = {"x.weight": torch.tensor([True, False, True, False]), "y.weight": torch.zeros(2, dtype=torch.bool)}
    per_layer = M.similarity(a, b).set_index("layer")
    assert per_layer.loc["x.weight", "jaccard"] == pytest.approx(1 / 3)
    assert per_layer.loc["x.weight", "hamming"] == pytest.approx(0.5)
    assert per_layer.loc["y.weight", "jaccard"] == 1.0  # both keep nothing: identical
    overall = M.similarity(a, b, by="overall").iloc[0]
    assert overall["jaccard"] == pytest.approx(1 / 3) and overall["hamming"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="y.weight"):
        M.similarity(a, {"x.weight": b["x.weight"]})


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, tiny):
    mask = half_mask(tiny)
    path = M.save(tmp_path / "m" / "mask.safetensors", mask, {"round": 2, "seed": 7, "model_config": {"a": [1, 2]}})
    back, meta = M.load(path)
    assert list(back) == list(mask)  # model order survives safetensors' key sorting
    assert all(torch.equal(back[k], mask[k]) and back[k].dtype == torch.bool for k in mask)
    assert meta["round"] == 2 and meta["seed"] == 7 and meta["model_config"] == {"a": [1, 2]}
    assert meta["sparsity"] == pytest.approx(M.sparsity(mask))
    assert [f.name for f in path.parent.iterdir()] == ["mask.safetensors"]


def test_corrupt_or_foreign_mask_file(tmp_path):
    p = tmp_path / "mask.safetensors"
    M.save(p, half_mask(seq()))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(CorruptFileError):
        M.load(p)
    from lthdiff.store import save_tensors

    save_tensors(p, seq().state_dict())
    with pytest.raises(ValueError, match="not a mask"):
        M.load(p)


# ---------------------------------------------------------------- torch.nn.utils.prune interop


def test_torch_prune_round_trip():
    model, ref = seq(), seq()
    mask = half_mask(model)
    M.to_torch_prune(model, mask)
    assert hasattr(model[0], "weight_orig") and prune.is_pruned(model)
    M.apply(ref, mask)
    assert torch.equal(model[2].weight, ref[2].weight)  # the prune hook applies the same mask
    back = M.from_torch_prune(model)
    assert list(back) == list(mask) and all(torch.equal(back[k], mask[k]) for k in mask)
    assert not prune.is_pruned(model)
    state, expected = model.state_dict(), ref.state_dict()
    assert set(state) == set(expected)  # plain names again: no weight_orig / weight_mask left
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_from_torch_prune_reads_global_unstructured():
    model = seq()
    params = [(model[0], "weight"), (model[2], "weight"), (model[4], "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    mask = M.from_torch_prune(model)
    assert list(mask) == M.prunable(model)
    assert M.sparsity(mask) == pytest.approx(0.5, abs=1e-2)
    assert M.sparsity(model) == M.sparsity(mask)
