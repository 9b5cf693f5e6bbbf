"""Structured lottery tickets: the channels a trained UNet keeps, with their weights rewound.

A *structured ticket* is the small architecture :func:`structured` finds on the trained weights
theta_T plus the *initial* weights theta_0 (or an early state theta_k, "late rewinding", Frankle et
al. 2019, "Stabilizing the Lottery Ticket Hypothesis", arXiv:1903.01611) at exactly the kept
channels.  :func:`ticket` builds it beside its two controls, all at the same architecture, so that
training each for the same number of steps compares only where the weights start:

- ``ticket``: theta_0 restricted to the kept channels (:func:`rewind_structured`), the channel-level
  analogue of Frankle & Carbin (2019, ICLR, "The Lottery Ticket Hypothesis") rewinding.
- ``scratch``: the same architecture freshly initialised: Liu et al. (2019, ICLR, "Rethinking the
  Value of Network Pruning"), who train structurally pruned architectures from scratch ("Scratch-E"
  when trained as long as the large model was; Sec. 4) and find them as good as fine-tuned ones,
  and the winning-ticket initialisation no better than random for structured pruning (Sec. 6).
- ``finetune``: the pruned *trained* weights, which Diff-Pruning (Fang, Ma & Wang 2023, NeurIPS,
  "Structural Pruning for Diffusion Models", Sec. 3) fine-tunes after its Taylor pruning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .prune import check_rewind_state, rewind_structured, structured
from .structure import StructuredInfo, unet_config

__all__ = ["StructuredArms", "ticket", "ARMS"]

ARMS = ("ticket", "scratch", "finetune")


@dataclass
class StructuredArms:
    """The three starting points :func:`ticket` builds, one small architecture (``config``)."""

    ticket: nn.Module  # theta_0 (or theta_k) at the kept channels
    scratch: nn.Module  # random initialisation of the small architecture
    finetune: nn.Module  # the trained weights at the kept channels (time MLP input refitted)
    info: StructuredInfo  # what structured() did: widths, MACs, kept channel indices

    @property
    def config(self) -> dict[str, Any]:
        """The small ``UNet2DModel`` config shared by the three arms."""
        return unet_config(self.ticket)

    def arms(self) -> dict[str, nn.Module]:
        """``{"ticket": ..., "scratch": ..., "finetune": ...}`` in :data:`ARMS` order."""
        return {name: getattr(self, name) for name in ARMS}


def fresh(config: Mapping[str, Any], seed: int) -> nn.Module:
    """A randomly initialised ``UNet2DModel(**config)``, deterministic by ``seed``; global RNG untouched."""
    from diffusers import UNet2DModel

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**unet_config(config))


def ticket(
    trained: nn.Module,
    rewind_to: Mapping[str, torch.Tensor] | nn.Module,
    ratio: float | Sequence[float],
    *,
    importance: str = "magnitude",
    data: Any = None,
    seed: int = 0,
    scratch_seed: int | None = None,
    **structured_kwargs: Any,
) -> StructuredArms:
    """Prune the channels of ``trained`` once; return the ticket, scratch and fine-tune arms.

    ``trained``: the trained dense ``UNet2DModel`` (theta_T; its EMA weights if it was sampled from).
    ``rewind_to``: its initialisation theta_0 (or a checkpoint theta_k), as a state dict or a UNet of
    the same config.  ``ratio`` and ``importance`` (``magnitude``, ``taylor``, ``diff_pruning``,
    ``hsic``), ``data``, ``seed`` and ``structured_kwargs`` go to :func:`structured`, which scores
    and picks the channels on ``trained`` only; ``ratio`` is the fraction of channels removed per
    level (:func:`ratio_for_macs` gives the one for a MAC reduction).  The importance is computed
    once and the same kept indices give the ticket (:func:`rewind_structured`) and the fine-tune arm.
    ``scratch_seed`` seeds the scratch arm's initialisation (default ``seed``).  Same arguments ->
    identical arms.  Inputs are not modified.
    """
    if "return_info" in structured_kwargs:
        raise ValueError("ticket() sets return_info itself (the StructuredInfo is StructuredArms.info)")
    check_rewind_state(trained, rewind_to)  # before the (possibly data-driven) importance, not after
    pruned, info = structured(trained, ratio, importance=importance, data=data, seed=seed, return_info=True,
                              **structured_kwargs)
    rewound = rewind_structured(trained, rewind_to, info)
    scratch = fresh(pruned.config, seed if scratch_seed is None else scratch_seed)
    for model in (rewound, scratch):
        model.to(next(pruned.parameters()).device).train(pruned.training)
    return StructuredArms(ticket=rewound, scratch=scratch, finetune=pruned, info=info)
