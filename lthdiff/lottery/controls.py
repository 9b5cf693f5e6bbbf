"""Controls: networks trained at a ticket's sparsity to tell what the ticket's mask and weights are worth.

open_lth calls them branches.  Each control is a small strategy object: given a round (its
pruned mask, the previous round's trained weights, the rewind weights), it returns the start
weights and the mask to train, and :func:`lthdiff.lottery.imp.run_imp` trains, saves and logs them like
the ticket.  To add a control, write one class here and add it to :data:`CONTROLS`; nothing else.

* ``random_reinit`` keeps the ticket's mask with a fresh random initialisation (Frankle & Carbin 2018, Sec. 2);
* ``random_mask`` keeps the rewind weights with a random mask of the same per-layer sparsity;
* ``one_shot`` prunes the dense (round 0) weights straight to the round's sparsity, rewinds and
  retrains: the one-shot pruning Frankle & Carbin 2018 (Sec. 2, Fig. 4) compare with iterative pruning.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch
import torch.nn as nn

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.models.unets import load_model
from .runs import RoundInfo
from lthdiff.runtime import mix_seed

__all__ = ["reinit", "RoundContext", "Control", "RandomReinit", "RandomMask", "OneShot", "CONTROLS"]

Mask = Mapping[str, torch.Tensor]


@dataclass
class RoundContext:
    """What a control may use in round ``round`` (>= 1) of an IMP run."""

    round: int
    target: float  # the round's overall sparsity
    mask: Mask  # the ticket's mask of this round
    trained: nn.Module  # the previous round's trained (raw) weights
    template: nn.Module  # the dense model run_imp was given (architecture, initial weights)
    seed: int
    run_dir: Path
    rewind_dir: Path
    rewind_step: int | None  # None: no rewinding (fine-tune the trained weights)
    prune: Callable[[nn.Module, float, Mask, int], dict[str, torch.Tensor]] | None = None  # the ticket's prune rule
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None

    def rewound(self, trained: nn.Module) -> nn.Module:
        """The rewind weights, or ``trained`` itself when the run does not rewind."""
        return trained if self.rewind_step is None else load_model(self.rewind_dir)


class Control(Protocol):
    """A control: the start weights and mask to train for a round, or None when it equals the ticket."""

    name: str

    def start_and_mask(self, ctx: RoundContext) -> tuple[nn.Module, Mask] | None: ...


def reinit(template: nn.Module, seed: int) -> nn.Module:
    """The same architecture with a new random initialisation drawn from ``seed`` (the random-reinit
    control's start; every submodule's own ``reset_parameters``, as PyTorch initialises it)."""
    model = copy.deepcopy(template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


class RandomReinit:
    """The ticket's mask, a fresh random initialisation of the same architecture."""

    name = "random_reinit"

    def start_and_mask(self, ctx: RoundContext) -> tuple[nn.Module, Mask] | None:
        return reinit(ctx.template, mix_seed(ctx.seed, ctx.round, 0x5EED)), ctx.mask


class RandomMask:
    """The rewind weights with a random mask of the ticket's per-layer sparsity."""

    name = "random_mask"

    def start_and_mask(self, ctx: RoundContext) -> tuple[nn.Module, Mask] | None:
        cmask = pruners.random_like(ctx.mask, seed=mix_seed(ctx.seed, ctx.round, 0x3A5C))
        return ctx.rewound(ctx.trained), cmask


class OneShot:
    """The dense weights pruned in one step to the round's sparsity (same prune rule), rewound."""

    name = "one_shot"

    def start_and_mask(self, ctx: RoundContext) -> tuple[nn.Module, Mask] | None:
        if ctx.round == 1:
            # Round 1 prunes the dense weights from a full mask: one-shot *is* the ticket.
            return None
        dense = RoundInfo.from_dir(ctx.run_dir / "round_00").load_model(ema=False)
        if ctx.prune is None:
            raise ValueError("one_shot needs the run's prune rule (RoundContext.prune); run it through run_imp")
        cmask = ctx.prune(dense, ctx.target, M.ones(dense, include=ctx.include, exclude=ctx.exclude), ctx.round)
        return ctx.rewound(dense), cmask


# name -> control; run_imp and the config accept exactly these names, in this order.
CONTROLS: dict[str, Control] = {c.name: c for c in (RandomReinit(), RandomMask(), OneShot())}
