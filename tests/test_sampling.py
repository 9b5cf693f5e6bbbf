import pytest
import torch

from lthdiff.evaluation import image_grid, pipeline, sample


def test_shape_dtype_and_determinism(micro_unet):
    a = sample(micro_unet, 5, steps=3, seed=3, batch_size=2, progress=False)
    b = sample(micro_unet, 5, steps=3, seed=3, batch_size=5, progress=False)
    c = sample(micro_unet, 5, steps=3, seed=4, progress=False)
    assert a.shape == (5, 1, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)  # independent of batch size
    assert not torch.equal(a, c)


def test_ddpm_sampler_deterministic(micro_unet):
    a = sample(micro_unet, 3, sampler="ddpm", steps=4, seed=0, progress=False)
    b = sample(micro_unet, 3, sampler="ddpm", steps=4, seed=0, batch_size=1, progress=False)
    c = sample(micro_unet, 3, sampler="ddpm", steps=4, seed=1, progress=False)
    d = sample(micro_unet, 3, sampler="ddim", steps=4, seed=0, progress=False)
    assert torch.equal(a, b)  # the same seed gives the same images whatever the batch size
    assert not torch.equal(a, c) and not torch.equal(a, d)  # another seed, or DDIM, gives others


def test_bad_arguments(micro_unet):
    with pytest.raises(ValueError, match="ddim, ddpm"):
        sample(micro_unet, 2, sampler="euler", progress=False)
    with pytest.raises(ValueError, match="n must"):
        sample(micro_unet, 0, progress=False)


def test_pipeline_runs(micro_unet):
    out = pipeline(micro_unet, "ddim")(batch_size=2, num_inference_steps=2, output_type="np")
    assert out.images.shape == (2, 16, 16, 1)


def test_image_grid(micro_unet):
    imgs = torch.randint(0, 255, (6, 1, 16, 16), dtype=torch.uint8)
    g = image_grid(imgs, nrow=3)
    assert g.size == (3 * 17 + 1, 2 * 17 + 1)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(imgs.float())
