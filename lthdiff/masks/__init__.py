"""Masks, ``{parameter name: bool tensor}`` (True = kept): build, apply, count, report, compare, save (safetensors, or bit-packed for records); N:M patterns."""

from . import nm
from .nm import check_nm, nm_eligible, nm_groups, nm_ungroup, nm_violations, parse_nm
from . import core
from .core import (Mask, apply, block_of, chance_jaccard, check_by, count, from_torch_prune, kind_of, load,
                   mask_similarity, ones, prunable, report, save, similarity, sparsity, stage_of,
                   to_torch_prune, validate)
from . import packed
from .packed import load_packed, save_packed

__all__ = ["nm", "check_nm", "nm_eligible", "nm_groups", "nm_ungroup", "nm_violations", "parse_nm", "core",
           "Mask", "apply", "block_of", "chance_jaccard", "check_by", "count", "from_torch_prune", "kind_of",
           "load", "mask_similarity", "ones", "prunable", "report", "save", "similarity", "sparsity",
           "stage_of", "to_torch_prune", "validate", "packed", "load_packed", "save_packed"]
