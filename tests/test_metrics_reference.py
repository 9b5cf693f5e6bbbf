"""FID and KID against an independent computation, and sampling against diffusers' own pipeline.

Relational tests (a set against itself is 0, noise is far) cannot see wiring errors: the wrong
feature layer, a missing feature scale, another uint8 rounding, the test split used as reference.
Here the same numbers are computed a second way: images converted to uint8 by hand, features from
the extractor network's penultimate layer, the Frechet distance in float64 with scipy's ``sqrtm``
(Heusel et al. 2017, Eq. 2) and unbiased KID (Binkowski et al. 2018, Eq. 4, cubic kernel
(x.y/d + 1)^3) on the subsets torch-fidelity draws for the given seed.
"""
import numpy as np
import pytest
import torch
from scipy import linalg

from lthdiff.data import load_dataset
from lthdiff.evaluation import evaluate
from lthdiff.evaluation.metrics.extractor import load_net


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round((x + 1) * 255 / 2), 0, 255).to(torch.uint8)


def _features(images_uint8: torch.Tensor) -> np.ndarray:
    net = load_net()
    with torch.no_grad():
        x = images_uint8.float() / 127.5 - 1
        return torch.cat([net.features(b) for b in x.split(128)]).double().numpy()


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _kid(a: np.ndarray, b: np.ndarray, subsets: int, size: int, seed: int) -> float:
    rng = np.random.RandomState(seed)
    d, values = a.shape[1], []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        m = size
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values))


@pytest.fixture(scope="module")
def generated():
    """Stand-in generated images: float digits from the test split, every third one with Gaussian
    noise added, so the two sets differ clearly (a FID far from 0, where relative errors mean something)."""
    x = load_dataset("digits", image_size=16, split="test").tensors[:300].clone()
    x[::3] = (x[::3] + 0.4 * torch.randn(x[::3].shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    return x


def test_fid_and_kid_equal_an_independent_computation(generated):
    seed, subsets, size = 3, 4, 150
    res = evaluate(generated, "digits", metrics=("fid", "kid"), feature_extractor="lthdiff-digits",
                   cache_dir=None, seed=seed, kid_subsets=subsets, kid_subset_size=size, progress=False)
    ref = _features(_uint8(load_dataset("digits", image_size=16, split="train").tensors))
    gen = _features(_uint8(generated))
    assert res.fid > 0.3  # held-out clean digits alone score ~0.1 with this extractor
    assert res.fid == pytest.approx(_frechet(gen, ref), rel=1e-4)
    assert res.kid == pytest.approx(_kid(gen, ref, subsets, size, seed), rel=1e-3, abs=1e-6)


def test_the_reference_is_the_train_split():
    """Scored against the training split, the training images themselves give FID ~0; the test
    split does not.  Catches a reference wired to the wrong split."""
    train = load_dataset("digits", image_size=16, split="train").tensors
    res = evaluate(train, "digits", metrics=("fid",), feature_extractor="lthdiff-digits", cache_dir=None,
                   progress=False)
    assert abs(res.fid) < 1e-6


def test_ddim_sampling_equals_diffusers_ddim_pipeline(micro_unet):
    """Our DDIM loop (eta=0) against diffusers' DDIMPipeline on the same UNet and the same noise."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

    from lthdiff.evaluation import sample

    n, steps, seed = 6, 5, 11
    ours = sample(micro_unet, n, sampler="ddim", steps=steps, seed=seed, progress=False)
    sched = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)
    pipe = DDIMPipeline(unet=micro_unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                  eta=0.0, output_type="np").images  # (n, H, W, C) float in [0, 1]
    theirs = torch.from_numpy(np.round(theirs * 255)).permute(0, 3, 1, 2).to(torch.int16)
    diff = (ours.to(torch.int16) - theirs).abs()
    assert int(diff.max()) <= 1  # float rounding at a .5 boundary moves a pixel by one level at most
    assert float((diff == 0).float().mean()) > 0.99
    assert ours.float().std() > 5  # not a constant image, where any loop would agree


def test_tests_run_offline():
    """The suite's own guarantee: "auto" resolves to the offline extractor without probing a host."""
    from lthdiff.evaluation.metrics import fidelity

    assert not fidelity.inception_available() and fidelity.resolve_extractor("auto", channels=1) == "lthdiff-digits"
    assert fidelity.online.cache_info().misses == 0  # the 2 s connection probe never ran
