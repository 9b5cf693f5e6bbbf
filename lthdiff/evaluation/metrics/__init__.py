"""Evaluation of (pruned) diffusion models: sample quality and efficiency.

Quality (:mod:`.fidelity`): :func:`fid`, :func:`kid` and :func:`evaluate` (FID + KID + precision/recall)
through torch-fidelity, with Inception-v3 or the offline digits extractor (:mod:`.extractor`).
Efficiency (:mod:`.efficiency`): parameter and MAC counts, sampling speed, memory, checkpoint sizes;
compressed tickets (:mod:`.compress`): bit-packed mask + kept values only.
"""
from .compress import load_compressed, save_compressed
from .fidelity import EXTRACTORS, METRICS, QualityResult, evaluate, fid, inception_available, kid, reference_key, resolve_extractor
from .paired_fidelity import paired

__all__ = ["fid", "kid", "evaluate", "QualityResult", "reference_key", "resolve_extractor", "inception_available",
           "EXTRACTORS", "METRICS", "save_compressed", "load_compressed", "efficiency", "compress", "extractor",
           "paired"]


def __getattr__(name: str):
    # submodules on attribute access (lthdiff.evaluation.metrics.efficiency) without importing them eagerly
    if name in ("efficiency", "compress", "extractor", "train_extractor"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
