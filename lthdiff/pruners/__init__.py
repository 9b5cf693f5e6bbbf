"""Pruners: given a model (and optionally the current mask), return the next mask or model.

Unstructured pruners (:func:`magnitude`, :func:`random`) return a mask and know nothing about
training (open_lth's "pruning strategy").  :func:`structured` removes whole channels through
torch-pruning and returns a physically smaller ``UNet2DModel``.
"""
from .unstructured import magnitude, random, random_like

__all__ = ["magnitude", "random", "random_like", "structured"]


def __getattr__(name: str):
    # torch-pruning is imported lazily: unstructured pruning should not pay for it.
    if name == "structured":
        from .structured import structured

        return structured
    raise AttributeError(name)
