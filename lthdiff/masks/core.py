"""Pruning masks: ``{parameter name: bool tensor}`` (True = kept), and everything done with them.

A mask is a plain ``dict`` so it can be inspected, edited and passed around in a notebook without
wrappers.  This module picks which parameters may be pruned (:func:`prunable`), applies, checks,
saves and loads masks, summarises them per layer or UNet block (:func:`report`) and compares two
masks (:func:`similarity`, the mask-overlap analysis of Jiang et al. 2023, arXiv:2310.18823).

Layer/block vocabulary for a diffusers ``UNet2DModel``: ``block_of("down_blocks.1.attentions.0.to_q
.weight") == "down_blocks.1.attentions"``; :func:`stage_of` gives down/mid/up/other and
:func:`kind_of` gives resnet/attention/sampler/other.
"""
from __future__ import annotations

import difflib
import itertools
import fnmatch
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
from torch import nn


__all__ = [
    "check_by", "chance_jaccard", "mask_similarity",
    "Mask",
    "prunable",
    "ones",
    "apply",
    "count",
    "sparsity",
    "validate",
    "block_of",
    "stage_of",
    "kind_of",
    "report",
    "similarity",
    "save",
    "load",
    "from_torch_prune",
    "to_torch_prune",
]

Mask = dict  # {parameter name: bool tensor of the parameter's shape}; True = kept
Patterns = Union[str, Sequence[str], None]

# Conv (any dimensionality, transposed too) and Linear weights: the layers LTH papers prune.
# isinstance so diffusers' subclasses (LoRACompatibleConv/Linear) count as well.
_PRUNABLE_MODULES = (nn.modules.conv._ConvNd, nn.Linear)
# Top-level UNet2DModel modules; each is one block in reports.
_UNET_TOP = {"conv_in", "conv_out", "conv_norm_out", "time_proj", "time_embedding", "class_embedding",
             "add_embedding", "encoder_hid_proj"}
_GROUPS = ("layer", "block", "stage", "kind")


def _as_patterns(patterns: Patterns, arg: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):  # a bare string would otherwise be iterated char by char
        return [patterns]
    out = list(patterns)
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise ValueError(f"{arg} must be fnmatch patterns (strings), got {bad!r}")
    return out


def prunable(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Names of the parameters eligible for pruning, in model order.

    Default: the ``.weight`` of every conv (``nn.Conv1d/2d/3d``, transposed convs) and ``nn.Linear``
    module, subclasses included; biases, norms and embeddings stay dense (as in Frankle & Carbin 2019).
    ``include`` / ``exclude`` are **fnmatch** patterns (``*``, ``?``, ``[..]``) matched against the full
    parameter name: ``include`` adds matching parameters, ``exclude`` then removes matching ones,
    e.g. ``exclude=["conv_in.weight", "conv_out.weight"]`` keeps the first and last conv dense.
    A pattern that matches no parameter raises ``ValueError`` (it is almost always a typo).
    """
    inc, exc = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    default = {f"{mname}.weight" if mname else "weight"
               for mname, mod in model.named_modules()
               if isinstance(mod, _PRUNABLE_MODULES) and isinstance(getattr(mod, "weight", None), nn.Parameter)}
    names = [n for n, _ in model.named_parameters()]
    for arg, pats in (("include", inc), ("exclude", exc)):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                close = difflib.get_close_matches(pat, names, n=3)
                raise ValueError(f"{arg} pattern {pat!r} matches no parameter of {type(model).__name__}"
                                 + (f"; did you mean {close}?" if close else ""))
    keep = []
    for n in names:
        chosen = n in default or any(fnmatch.fnmatchcase(n, p) for p in inc)
        if chosen and not any(fnmatch.fnmatchcase(n, p) for p in exc):
            keep.append(n)
    return keep


def ones(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> Mask:
    """The dense mask (all True) over :func:`prunable` parameters (round 0 of IMP)."""
    params = dict(model.named_parameters())
    return {n: torch.ones(params[n].shape, dtype=torch.bool) for n in prunable(model, include, exclude)}


def validate(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the parameter if ``mask`` does not fit ``model``.

    Checks: every key is a parameter of ``model``; every value is a bool tensor of that
    parameter's shape.
    """
    if not isinstance(mask, Mapping):
        raise ValueError(f"a mask must be a mapping {{parameter name: bool tensor}}, got {type(mask).__name__}")
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name not in params:
            close = difflib.get_close_matches(str(name), list(params), n=3)
            raise ValueError(f"mask key {name!r} is not a parameter of {type(model).__name__}"
                             + (f"; did you mean {close}?" if close else ""))
        if not isinstance(m, torch.Tensor):
            raise ValueError(f"mask for {name!r} must be a bool tensor, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise ValueError(f"mask for {name!r} has dtype {m.dtype}; masks must be torch.bool (True = kept)")
        if tuple(m.shape) != tuple(params[name].shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(m.shape)} but the parameter has shape "
                             f"{tuple(params[name].shape)}")


@torch.no_grad()
def apply(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned weights of ``model`` in place (validated first); returns ``model``."""
    validate(model, mask)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        p = params[name]
        p.mul_(m.to(device=p.device, dtype=p.dtype))
    return model


def count(mask: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(kept, total)`` number of weights covered by ``mask``."""
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return kept, total


def sparsity(mask_or_model: Mapping[str, torch.Tensor] | nn.Module, include: Patterns = None,
             exclude: Patterns = None) -> float:
    """Fraction of eligible weights that are pruned, in [0, 1].

    For a mask: pruned / total over its entries (0.0 for an empty mask).  For a model: the
    fraction of exact zeros among its :func:`prunable` weights (``include``/``exclude`` as there).
    """
    if isinstance(mask_or_model, nn.Module):
        names = prunable(mask_or_model, include, exclude)
        if not names:
            raise ValueError(f"{type(mask_or_model).__name__} has no prunable parameters "
                             f"(include={include!r}, exclude={exclude!r})")
        params = dict(mask_or_model.named_parameters())
        zeros = sum(int((params[n].detach() == 0).sum()) for n in names)
        total = sum(params[n].numel() for n in names)
        return zeros / total
    kept, total = count(mask_or_model)
    return 0.0 if total == 0 else (total - kept) / total


def block_of(name: str) -> str:
    """The block a parameter belongs to, for per-block reports.

    UNet2DModel: ``down_blocks.<i>.<resnets|attentions|downsamplers>``, ``up_blocks.<i>.<...>``,
    ``mid_block.<resnets|attentions>``, or the top-level module (``conv_in``, ``conv_out``,
    ``time_embedding``, ``conv_norm_out``...).  Other models (classifiers): the parent of the
    parameter's module, e.g. ``layer1.0.conv1.weight -> layer1.0`` (the module itself when it is
    top-level: ``fc.weight -> fc``).
    """
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        return ".".join(parts[:3])
    if parts[0] == "mid_block" and len(parts) >= 3:
        return ".".join(parts[:2])
    if parts[0] in _UNET_TOP and len(parts) >= 2:
        return parts[0]
    module = parts[:-1]
    if len(module) >= 2:
        return ".".join(module[:-1])
    return module[0] if module else name


def stage_of(name: str) -> str:
    """Coarse UNet stage of a parameter: ``"down"``, ``"mid"``, ``"up"`` or ``"other"``."""
    head = name.split(".", 1)[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(head, "other")


def kind_of(name: str) -> str:
    """Kind of UNet sub-block: ``"resnet"``, ``"attention"``, ``"sampler"`` (down/upsampler) or ``"other"``."""
    parts = set(name.split("."))
    if "resnets" in parts:
        return "resnet"
    if "attentions" in parts:
        return "attention"
    if "downsamplers" in parts or "upsamplers" in parts:
        return "sampler"
    return "other"


def check_by(by: str, accepted: Iterable[str]) -> None:
    accepted = tuple(accepted)
    if by not in accepted:
        raise ValueError(f"unknown by={by!r}; accepted: {list(accepted)}")


def _frame(rows: list[dict[str, Any]], by: str, sums: Sequence[str]):
    """Per-layer rows -> DataFrame, aggregated by block/stage/kind in first-appearance order."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if by == "layer" or df.empty:
        return df
    agg = {c: "sum" for c in sums}
    agg["layer"] = "count"
    # a block lies in one stage and is of one kind, so carry those columns along
    keys = ["block", "stage", "kind"] if by == "block" else [by]
    return df.groupby(keys, sort=False, as_index=False).agg(agg).rename(columns={"layer": "layers"})


def report(mask: Mapping[str, torch.Tensor], by: str = "layer"):
    """Per-layer (or per-block/stage/kind) counts of ``mask`` as a pandas DataFrame.

    Columns: the group (``layer``, ``block``, ``stage`` or ``kind``), ``total``, ``kept``,
    ``pruned``, ``sparsity`` (= pruned / total); per-layer rows also carry ``block``, ``stage``,
    ``kind``, and grouped rows a ``layers`` count.  Rows follow model order; rows sum to
    :func:`count`.
    """
    check_by(by, _GROUPS)
    rows = []
    for name, m in mask.items():
        kept, total = int(m.sum()), m.numel()
        rows.append({"layer": name, "block": block_of(name), "stage": stage_of(name), "kind": kind_of(name),
                     "total": total, "kept": kept, "pruned": total - kept})
    df = _frame(rows, by, ("total", "kept", "pruned"))
    if df.empty:
        import pandas as pd

        return pd.DataFrame(columns=[by, "total", "kept", "pruned", "sparsity"])
    df["sparsity"] = (df["pruned"] / df["total"]).where(df["total"] > 0, 0.0)
    return df


def _check_same_layout(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"masks cover different parameters: only in the first {only_a[:5]}"
                         f"{'...' if len(only_a) > 5 else ''}, only in the second {only_b[:5]}"
                         f"{'...' if len(only_b) > 5 else ''}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"masks for {name!r} have shapes {tuple(a[name].shape)} and {tuple(b[name].shape)}")


def similarity(mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor], by: str = "layer"):
    """Overlap of two masks over the same parameters, as a pandas DataFrame.

    ``jaccard`` = |kept_a AND kept_b| / |kept_a OR kept_b| (IoU of the kept weights; 1.0 when both
    keep nothing) and ``hamming`` = fraction of positions where the masks differ; computed per
    ``layer``, ``block``, ``stage``, ``kind`` (counts summed within the group) or ``overall`` (one row).
    This is the ticket-overlap analysis of Jiang et al. 2023 (arXiv:2310.18823).
    Other columns: ``total``, ``kept_a``, ``kept_b``, ``intersection``, ``union``, ``differ``.
    """
    check_by(by, _GROUPS + ("overall",))
    _check_same_layout(mask_a, mask_b)
    rows = []
    for name, a in mask_a.items():
        b = mask_b[name].to(a.device)
        rows.append({"layer": name, "block": block_of(name), "stage": stage_of(name), "kind": kind_of(name),
                     "overall": "overall", "total": a.numel(), "kept_a": int(a.sum()), "kept_b": int(b.sum()),
                     "intersection": int((a & b).sum()), "union": int((a | b).sum()),
                     "differ": int((a ^ b).sum())})
    sums = ("total", "kept_a", "kept_b", "intersection", "union", "differ")
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=[by, *sums, "jaccard", "hamming"])
    df = _frame(rows, by, sums)
    if by == "overall":
        df = df.drop(columns=["layers"])
    elif by == "layer":
        df = df.drop(columns=["overall"])
    df["jaccard"] = (df["intersection"] / df["union"]).where(df["union"] > 0, 1.0)
    df["hamming"] = (df["differ"] / df["total"]).where(df["total"] > 0, 0.0)
    return df


_ORDER_KEY = "lthdiff_mask_order"  # safetensors sorts keys; this restores model order on load


def save(path: str | os.PathLike, mask: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``mask`` atomically as safetensors with JSON ``metadata`` (round, seed, model config...).

    ``sparsity``, ``kept`` and ``total`` are added to the metadata automatically (computed from
    the mask, so they cannot disagree with it).
    """
    from lthdiff.store.io import save_tensors

    bad = [n for n, m in mask.items() if not isinstance(m, torch.Tensor) or m.dtype != torch.bool]
    if bad:
        raise ValueError(f"mask entries must be bool tensors; not bool: {bad[:5]}")
    kept, total = count(mask)
    meta = dict(metadata or {})
    meta.update({"sparsity": sparsity(mask), "kept": kept, "total": total, _ORDER_KEY: list(mask)})
    return save_tensors(path, dict(mask), meta)


def load(path: str | os.PathLike) -> tuple[Mask, dict[str, Any]]:
    """Load a mask written by :func:`save`; returns ``(mask, metadata)`` with masks in saved order.

    A truncated or corrupt file raises :class:`lthdiff.store.io.CorruptFileError`; a safetensors file that
    holds non-bool tensors (e.g. model weights) raises ``ValueError``.
    """
    from lthdiff.store.io import load_tensors

    tensors, meta = load_tensors(path)
    bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
    if bad:
        raise ValueError(f"{path} is not a mask file: {bad[:5]} are not bool tensors "
                         f"(dtype {tensors[bad[0]].dtype})")
    order = meta.pop(_ORDER_KEY, None)
    if isinstance(order, list) and set(order) == set(tensors):
        tensors = {n: tensors[n] for n in order}
    return tensors, meta


def _pruning_hooks(module: nn.Module) -> list[Any]:
    from torch.nn.utils import prune

    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def from_torch_prune(model: nn.Module, remove: bool = True) -> Mask:
    """Read the ``<name>_mask`` buffers that ``torch.nn.utils.prune`` installed into a mask.

    Keys are plain parameter names (``conv.weight``, not ``conv.weight_orig``).  With ``remove``
    (default) the pruning is made permanent with ``prune.remove``: hooks and buffers go away and
    the parameters become plain tensors with the zeros baked in.
    """
    from torch.nn.utils import prune

    mask: Mask = {}
    for mname, module in model.named_modules():
        for hook in _pruning_hooks(module):
            tname = hook._tensor_name
            key = f"{mname}.{tname}" if mname else tname
            mask[key] = getattr(module, f"{tname}_mask").detach().to("cpu", torch.bool).clone()
            if remove:
                prune.remove(module, tname)
    if remove:  # restore model order: prune.remove re-registers parameters at the end
        order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
        mask = dict(sorted(mask.items(), key=lambda kv: order.get(kv[0], len(order))))
    return mask


def to_torch_prune(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """Install ``mask`` as ``torch.nn.utils.prune.custom_from_mask`` on each masked parameter.

    Afterwards the model behaves like any ``torch.nn.utils.prune``-pruned model (``weight_orig``
    parameters, ``weight_mask`` buffers); :func:`from_torch_prune` reverses it.  Returns ``model``.
    """
    from torch.nn.utils import prune

    validate(model, mask)
    modules = dict(model.named_modules())
    for name, m in mask.items():
        mname, _, tname = name.rpartition(".")
        module = modules[mname]
        prune.custom_from_mask(module, tname, mask=m.to(getattr(module, tname).device))
    return model


def chance_jaccard(density_a: float, density_b: float) -> float:
    """Jaccard overlap expected between independent random masks keeping ``density_a`` and ``density_b``.

    E|A and B| / E|A or B| = d_a d_b / (d_a + d_b - d_a d_b); the baseline Movva et al. 2021 compare
    sibling tickets against.
    """
    union = density_a + density_b - density_a * density_b
    return 1.0 if union == 0 else density_a * density_b / union


def mask_similarity(masks: Sequence[Mask], by: str = "block"):
    """Mean pairwise :func:`lthdiff.masks.similarity` of two or more masks, one row per unit.

    Columns ``jaccard``, ``hamming`` (means over all pairs), ``chance_jaccard`` (mean over pairs of
    :func:`chance_jaccard` at the pair's densities) and ``pairs``; indexed by layer or block.
    """
    import pandas as pd

    if len(masks) < 2:
        raise ValueError(f"mask_similarity needs at least two masks, got {len(masks)}")
    frames = []
    for a, b in itertools.combinations(masks, 2):
        df = similarity(a, b, by=by)
        df["chance_jaccard"] = [chance_jaccard(ka / t, kb / t) if t else 1.0
                                for ka, kb, t in zip(df["kept_a"], df["kept_b"], df["total"])]
        frames.append(df[[by, "jaccard", "hamming", "chance_jaccard"]])
    out = pd.concat(frames).groupby(by, sort=False).mean()
    out["pairs"] = len(frames)
    return out
