"""Structured (channel) pruning: shapes, config round trip, importances, determinism, errors."""
import copy

import pytest
import torch
from torch import nn

from lthdiff.models import param_count, unet
from lthdiff.pruners.channels import IMPORTANCES, HSICImportance, config_macs, pruned_config, ratio_for_macs, structured

X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
T = torch.tensor([3, 700])
# Cheap settings for the data-driven criteria (a handful of images and timesteps).
FAST = dict(batch_size=4, timesteps=3, progress=False)


@pytest.fixture(scope="module")
def tiny():
    return unet("tiny", seed=0)


@pytest.fixture(scope="module")
def data():
    from lthdiff.data import load_dataset

    return load_dataset("digits", image_size=16)


@pytest.fixture(scope="module")
def pruned(tiny, data):
    """Each importance once at ratio 0.5 (shared by several tests)."""
    return {imp: structured(tiny, 0.5, importance=imp, data=data, return_info=True, **FAST) for imp in IMPORTANCES}


def out(model, x=X, t=T):
    with torch.no_grad():
        return model(x, t).sample


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_each_importance_gives_a_smaller_unet_with_the_same_interface(tiny, pruned, importance):
    model, info = pruned[importance]
    # half of the channels, rounded to the GroupNorm multiple (8): 32 -> 16, 48 -> 24, time MLP 128 -> 64
    assert model.config.block_out_channels == (16, 24, 24)
    assert model.config.time_embedding_dim == 64
    assert out(model).shape == X.shape
    assert torch.isfinite(out(model)).all()
    # exactly the parameter count of a fresh UNet of the pruned widths, about (1-r)^2 of the dense one
    fresh = unet("tiny", block_out_channels=(16, 24, 24), time_embedding_dim=64)
    assert param_count(model) == param_count(fresh) == info.params[1]
    assert 0.2 < param_count(model) / param_count(tiny) < 0.3
    assert info.macs[1] == config_macs(model) < info.macs[0] == config_macs(tiny)


def test_input_is_not_modified(tiny, data):
    before = copy.deepcopy(tiny.state_dict())
    structured(tiny, 0.5, importance="taylor", data=data, **FAST)
    after = tiny.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert tiny.config.block_out_channels == (32, 48, 48)
    assert all(p.grad is None for p in tiny.parameters())


def test_ratio_zero_keeps_the_function(tiny):
    same = structured(tiny, 0.0)
    assert same is not tiny and same.config.block_out_channels == tiny.config.block_out_channels
    assert torch.equal(out(same), out(tiny))


def test_pruned_weights_are_the_original_weights_at_the_kept_channels(tiny, pruned):
    model, info = pruned["magnitude"]
    rows = info.kept["down_blocks.0.resnets.0.conv1"]  # its own output channels
    cols = info.kept["conv_in"]  # the level-0 residual stream it reads
    assert torch.equal(model.down_blocks[0].resnets[0].conv1.weight,
                       tiny.down_blocks[0].resnets[0].conv1.weight[rows][:, cols])
    assert torch.equal(model.conv_in.weight, tiny.conv_in.weight[cols])


def test_magnitude_keeps_the_largest_channel(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        model.down_blocks[0].resnets[0].conv1.weight[7] *= 100
        model.down_blocks[0].resnets[0].conv1.weight[4] *= 0
    _, info = structured(model, 0.5, return_info=True)
    kept = info.kept["down_blocks.0.resnets.0.conv1"]
    assert 7 in kept and 4 not in kept  # (both in the GroupNorm group of channels 4..7)


def test_groupnorm_groups_keep_equal_shares(pruned):
    _, info = pruned["hsic"]
    # norm2 (8 groups of 4) normalises this group's channels; norm1 of down block 0 reads conv_in's
    for name in ("down_blocks.0.resnets.0.conv1", "conv_in", "mid_block.resnets.0.conv1"):
        kept = torch.tensor(info.kept[name])
        n = 32 if name != "mid_block.resnets.0.conv1" else 48
        per_group = torch.bincount(kept // (n // 8), minlength=8)
        assert (per_group == len(kept) // 8).all(), (name, per_group)


def test_attention_keeps_whole_heads(pruned):
    model, info = pruned["taylor"]
    kept = torch.tensor(info.kept["down_blocks.1.attentions.0.to_v"])
    heads = kept.view(-1, 8)  # attention_head_dim = 8
    assert (heads == heads[:, :1] + torch.arange(8)).all() and (heads[:, 0] % 8 == 0).all()
    assert model.down_blocks[1].attentions[0].heads == 24 // 8 == len(heads)


def test_time_embedding_keeps_exact_frequencies_and_refits_no_worse_than_truncation(tiny, pruned):
    model, info = pruned["magnitude"]
    t = torch.arange(1000)
    old, new = tiny.time_proj(t), model.time_proj(t)
    cols = list(range(8)) + list(range(16, 24))  # (cos, sin) of the 8 highest of 16 frequencies
    assert torch.allclose(new, old[:, cols], atol=1e-6)
    rows = info.kept["time_embedding.linear_1"]
    lin, ref = model.time_embedding.linear_1, tiny.time_embedding.linear_1
    with torch.no_grad():
        want = ref(old)[:, rows]
        err = ((lin(new) - want).norm() / want.norm()).item()
        truncated = ((nn.functional.linear(new, ref.weight[rows][:, cols], ref.bias[rows]) - want).norm()
                     / want.norm()).item()
    assert err == pytest.approx(info.time_embedding_error, rel=1e-3, abs=1e-5)
    assert err <= truncated + 1e-6


def test_round_trip_through_diffusers_and_ddim(pruned, tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    model, _ = pruned["diff_pruning"]
    model.save_pretrained(tmp_path / "unet")
    loaded = UNet2DModel.from_pretrained(tmp_path / "unet").train(model.training)  # same kernels
    assert tuple(loaded.config.block_out_channels) == (16, 24, 24)
    assert torch.equal(out(loaded), out(model))
    pipe = DDIMPipeline(unet=loaded, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 16, 16, 1)


def test_pruned_model_trains_and_takes_an_unstructured_mask(pruned, data):
    from lthdiff import masks
    from lthdiff.pruners import magnitude
    from lthdiff.training import train

    model = copy.deepcopy(pruned["magnitude"][0])
    mask = magnitude(model, 0.5)
    result = train(model, data, 2, batch_size=8, ema=False, mask=mask, progress=False)
    assert len(result.losses) == 2
    assert masks.sparsity(result.model) == pytest.approx(masks.sparsity(mask), abs=1e-3)


# ---------------------------------------------------------------- options


def test_per_level_ratio_and_ignored_layers_keep_levels_dense(tiny):
    a = structured(tiny, [0.0, 0.5, 0.5])
    assert a.config.block_out_channels == (32, 24, 24) and a.config.time_embedding_dim == 128
    b = structured(tiny, 0.5, ignored_layers=["down_blocks.0.resnets.0.conv1", "time_embedding"])
    assert b.config.block_out_channels == (32, 24, 24) and b.config.time_embedding_dim == 128
    assert out(b).shape == X.shape


def test_diff_pruning_stops_at_the_relative_loss_threshold(tiny, data):
    for threshold in (1.0, 1e-9):
        _, info = structured(tiny, 0.5, importance="diff_pruning", data=data, threshold=threshold,
                             batch_size=4, timesteps=list(range(0, 1000, 100)), return_info=True, progress=False)
        losses = info.losses
        assert info.timesteps == list(range(0, 100 * len(losses), 100))  # scanned from t=0, in grid order
        for i in range(len(losses) - 1):  # every step before the last is informative: L_t >= thr * L_max
            assert losses[i] >= threshold * max(losses[:i + 1])
        if len(losses) < 10:  # it stopped early: the last loss fell under the threshold
            assert losses[-1] < threshold * max(losses)
    assert len(losses) == 10  # a negligible threshold keeps the whole grid


def test_same_seed_same_weights_other_seed_other_channels(tiny, data):
    for imp in ("hsic", "taylor"):
        a, ia = structured(tiny, 0.5, importance=imp, data=data, seed=3, return_info=True, **FAST)
        b, ib = structured(tiny, 0.5, importance=imp, data=data, seed=3, return_info=True, **FAST)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    _, ic = structured(tiny, 0.5, importance="taylor", data=data, seed=4, return_info=True, **FAST)
    assert ic.kept != ia.kept


def test_hsic_is_one_for_a_copy_of_the_target_and_zero_for_a_constant():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(2, 1, 1, 1))
                self.conv.bias.copy_(torch.tensor([0.0, 0.7]))

        def forward(self, x, t):
            return self.conv(x)

    toy, hsic = Toy(), HSICImportance()
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    hsic.accumulate(toy, noise, torch.zeros(16), noise)
    assert torch.allclose(hsic.sums[toy.conv], torch.tensor([1.0, 0.0]), atol=1e-5)


def test_ratio_for_macs_finds_the_smallest_sufficient_ratio(tiny):
    dense = config_macs(tiny)
    r = ratio_for_macs(tiny, 0.5, tol=0.01)
    assert 1 - config_macs(pruned_config(tiny, r)) / dense >= 0.5
    assert 1 - config_macs(pruned_config(tiny, max(0.0, r - 0.011))) / dense < 0.5
    assert config_macs(pruned_config(tiny, 0.0)) == dense


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "0.5", True, [0.5, 0.5]])
def test_bad_ratio_names_the_value(tiny, bad):
    with pytest.raises(ValueError, match="ratio") as exc:
        structured(tiny, bad)
    assert repr(bad) in str(exc.value)


def test_unknown_importance_lists_accepted(tiny):
    with pytest.raises(ValueError, match="'l1'") as exc:
        structured(tiny, 0.5, importance="l1")
    assert all(name in str(exc.value) for name in IMPORTANCES)


def test_data_driven_importance_needs_data_and_unknown_layers_are_named(tiny):
    with pytest.raises(ValueError, match="needs data"):
        structured(tiny, 0.5, importance="taylor")
    with pytest.raises(ValueError, match="'down_blocks.9'"):
        structured(tiny, 0.5, ignored_layers=["down_blocks.9"])


def test_package_attribute_is_callable_after_the_module_is_imported(tiny):
    import lthdiff.pruners as P
    import lthdiff.pruners.channels  # noqa: F401  binds P.structured to the module

    for _ in range(2):
        assert P.structured(tiny, 0.5).config.block_out_channels == (16, 24, 24)


def test_widths_keep_the_shortcut_pattern(tiny):
    # 32 and 48 both round to 8 at ratio 0.9; equal widths would drop down_blocks.1's shortcut conv
    model = structured(tiny, 0.9)
    assert model.config.block_out_channels == (8, 16, 16)
    assert out(model).shape == X.shape
    with pytest.raises(ValueError, match=r"levels \[1, 2\]"):
        pruned_config(tiny, [0.5, 0.5, 0.25])  # levels 1 and 2 share 48 channels and identity shortcuts


def test_per_level_ratios_land_at_least_as_close_as_uniform(tiny):
    dense = config_macs(tiny)
    for target in (0.3, 0.5, 0.7):
        uniform = ratio_for_macs(tiny, target)
        levels = ratio_for_macs(tiny, target, per_level=True)
        gap = abs(1 - config_macs(pruned_config(tiny, levels)) / dense - target)
        assert gap <= abs(1 - config_macs(pruned_config(tiny, uniform)) / dense - target) + 0.02
        assert structured(tiny, levels).config.block_out_channels == pruned_config(tiny, levels)["block_out_channels"]
