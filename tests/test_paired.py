"""Paired fidelity (SSIM / PSNR / perceptual) of a pruned model to its dense reference."""
import copy

import pytest
import torch

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.evaluation import paired
from lthdiff.evaluation.metrics.paired_fidelity import paired_images


@pytest.fixture(scope="module")
def trained(small_digits):
    from lthdiff.models import unet
    from lthdiff.training import train

    model = unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4, seed=0)
    return train(model, small_digits, 150, batch_size=32, seed=0, ema=False, progress=False).model


def test_identical_models_are_perfect(trained):
    out = paired(trained, copy.deepcopy(trained), n=8, steps=5, seed=3, perceptual="lthdiff-digits-layers")
    assert out["ssim"] == 1.0 and out["perceptual"] == 0.0 and out["psnr"] == 100.0
    assert out["perceptual_kind"] == "lthdiff-digits-layers" and out["n"] == 8


def test_pruned_scores_between_identical_and_untrained(trained):
    from lthdiff.models import unet

    pruned = copy.deepcopy(trained)
    M.apply(pruned, pruners.magnitude(pruned, 0.3))
    untrained = unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4, seed=1)
    ref = __import__("lthdiff.evaluation.sampling", fromlist=["sample"]).sample(trained, 16, steps=5, seed=0, progress=False)
    p = paired(ref, pruned, n=16, steps=5, seed=0, perceptual="lthdiff-digits-layers")
    u = paired(ref, untrained, n=16, steps=5, seed=0, perceptual="lthdiff-digits-layers")
    assert 1.0 > p["ssim"] > u["ssim"]
    assert 0.0 < p["perceptual"] < u["perceptual"]
    assert 100.0 > p["psnr"] > u["psnr"]


def test_same_seed_same_result_and_errors(trained):
    a = paired(trained, trained, n=4, steps=3, seed=1)
    b = paired(trained, trained, n=4, steps=3, seed=1)
    assert a == b and a["perceptual_kind"] in ("lpips-alex", "lthdiff-digits-layers")
    with pytest.raises(ValueError, match="perceptual 'vgg'.*accepted"):
        paired_images(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16), perceptual="vgg")
    with pytest.raises(ValueError, match="differ in shape"):
        paired_images(torch.zeros(2, 1, 16, 16), torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match="n must be a positive int"):
        paired(trained, trained, n=0)
