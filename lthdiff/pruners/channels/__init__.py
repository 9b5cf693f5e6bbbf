"""Structured (channel) pruning of diffusers UNets: a physically smaller ``UNet2DModel``.

torch-pruning's dependency graph (Fang et al. 2023, "DepGraph") finds which convolutions, linears
and norms share a channel axis; an importance criterion scores the channels of each such group;
the lowest-scoring channels are removed.  The result is rebuilt as a *plain* ``UNet2DModel`` whose
config describes it exactly, so ``save_pretrained`` / ``from_pretrained``, DDPM/DDIM pipelines,
:func:`lthdiff.training.loop.train` and unstructured IMP all work on it unchanged.

To stay expressible by the config, widths are uniform per resolution level: every group at level
``i`` keeps ``block_out_channels'[i]`` channels, a multiple of the GroupNorm group count (each
GroupNorm group keeps the same number of its own channels, so groups keep their members), and
attention keeps whole heads of ``attention_head_dim``.  Which channels survive is chosen per group
by the importance.  GroupNorms over an up-block skip concatenation see their group boundaries move
a little (as in torch-pruning and the official Diff-Pruning code); fine-tuning absorbs it.

The sinusoidal time embedding has ``block_out_channels[0]`` features.  Pruning level 0 shrinks it;
``freq_shift`` is lowered so the kept features are *exactly* the original highest frequencies, and
``time_embedding.linear_1`` is refitted by least squares over the training timesteps.

Layout: :mod:`.importance` (criteria), :mod:`.structure` (widths, configs, MAC budget),
:mod:`.prune` (the pruning itself, and :func:`rewind_structured`), :mod:`.tickets` (structured
lottery tickets: the kept channels rewound to theta_0, with the scratch and fine-tune arms).

MACs: a conv between two pruned levels costs ``(1-r)^2`` of its dense MACs, so MACs fall by about
``1 - (1-r)^2`` (r=0.3 -> ~51 %, r=0.5 -> ~75 %), less where rounding to the GroupNorm multiple
keeps channels.  :func:`ratio_for_macs` finds a uniform ratio, or one ratio per level, for a target
reduction; :func:`pruned_config` and :func:`config_macs` give the structure and its cost without pruning.
"""
from .importance import IMPORTANCES, HSICImportance
from .prune import rewind_structured, structured
from .structure import StructuredInfo, chance_overlap, config_macs, kept_overlap, pruned_config, ratio_for_macs
from .tickets import ARMS, StructuredArms, ticket

__all__ = ["IMPORTANCES", "HSICImportance", "StructuredInfo", "structured", "pruned_config", "config_macs",
           "ratio_for_macs", "kept_overlap", "chance_overlap", "rewind_structured", "ticket", "StructuredArms", "ARMS"]
