"""Pruners: given a model (and optionally the current mask), return the next mask or model.

Unstructured pruners (:func:`magnitude`, :func:`random`) return a mask and know nothing about
training (open_lth's "pruning strategy").  :func:`structured` removes whole channels through
torch-pruning and returns a physically smaller ``UNet2DModel``; its criteria, structure and
pruner live in the :mod:`lthdiff.pruners.channels` subpackage.
"""
from .unstructured import magnitude, random, random_like

# Imported eagerly (torch-pruning costs ~20 ms): binding the function here, after the subpackage
# import has set ``pruners.structured`` to the subpackage, makes ``pruners.structured`` the function.
from .channels import structured

__all__ = ["magnitude", "random", "random_like", "structured"]
