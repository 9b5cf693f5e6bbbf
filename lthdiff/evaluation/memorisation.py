"""Memorisation: are the samples closer to the training images than unseen images of the same data are?

For each generated sample, the distance to its nearest training image; for each held-out test image, the
distance to *its* nearest training image, the yardstick of "new but same data".  Reported in pixels (L2 over
the image in [0, 1]) and in the FID extractor's features:

* ``closer_than_test`` - the fraction of samples closer to a training image than the closest test image is
  (min over test images of the test-to-train distance); a model that copies training images scores high, one
  that draws new images of the same data scores near 0;
* ``copy_rate`` - the fraction of samples whose nearest-training distance is below a third of the median
  test-to-train distance (the threshold ``COPY_FRACTION`` x median, stated in every result): a near-duplicate,
  as in Somepalli et al. 2023 and Carlini et al. 2023, who call a sample a copy when it lies far closer to one
  training image than typical images do;
* ``nn_ratio`` - median sample-to-train distance / median test-to-train distance (1: as novel as test images).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["COPY_FRACTION", "nearest_distances", "memorisation", "extractor_features"]

COPY_FRACTION = 1 / 3


def nearest_distances(query: torch.Tensor, bank: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """L2 distance of each row of ``query`` (N, D) to its nearest row of ``bank`` (M, D), in chunks."""
    out = []
    q, b = query.double(), bank.double()
    for i in range(0, len(q), chunk):
        out.append(torch.cdist(q[i:i + chunk], b).min(dim=1).values)
    return torch.cat(out).float()


def extractor_features(images: torch.Tensor, extractor: str, batch_size: int = 500) -> torch.Tensor:
    """Features of uint8 images (N, C, H, W) in the FID layer of a torch-fidelity extractor (registered name)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from .metrics.fidelity import resolve_extractor

    resolve_extractor(extractor, images.shape[1])  # registers lthdiff's extractors
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    fe = cls(extractor, features_list=[cls.get_default_feature_layer_for_metric("fid")]).eval()
    x = images if images.shape[1] == 3 or extractor.startswith("lthdiff") else images.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return torch.cat([fe(x[i:i + batch_size])[0].reshape(len(x[i:i + batch_size]), -1).float()
                          for i in range(0, len(x), batch_size)])


def _stats(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    d_s = nearest_distances(samples, train)
    d_t = nearest_distances(test, train)
    med_t = float(d_t.median())
    return {"closer_than_test": float((d_s < d_t.min()).float().mean()),
            "copy_rate": float((d_s < COPY_FRACTION * med_t).float().mean()),
            "nn_ratio": float(d_s.median()) / med_t if med_t > 0 else float("inf"),
            "sample_nn_median": float(d_s.median()), "test_nn_median": med_t}


def memorisation(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *,
                 extractor: str | None = None) -> dict[str, Any]:
    """Memorisation numbers of uint8 ``samples`` against ``train`` and held-out ``test`` images (module doc):
    ``{"pixels": {...}, "features": {...} or None, "copy_fraction": 1/3}``."""
    for name, x in (("samples", samples), ("train", train), ("test", test)):
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{name} must be uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if samples.shape[1:] != train.shape[1:] or test.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])}, train {tuple(train.shape[1:])} and test "
                         f"{tuple(test.shape[1:])} must have one image shape")
    flat = lambda x: x.reshape(len(x), -1).float() / 255  # noqa: E731
    out: dict[str, Any] = {"pixels": _stats(flat(samples), flat(train), flat(test)), "features": None,
                           "copy_fraction": COPY_FRACTION}
    if extractor is not None:
        f = [extractor_features(x, extractor) for x in (samples, train, test)]
        out["features"] = _stats(*f)
        out["extractor"] = extractor
    return out
