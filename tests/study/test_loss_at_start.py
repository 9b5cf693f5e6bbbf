"""The loss at init every study row records, against the DDPM formula computed by hand."""
import copy
import os
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from lthdiff import masks as M
from lthdiff.study import aggregate as A
from lthdiff.study import records as R
from lthdiff.study import queue as Q
from lthdiff.study.arms import plan, variant_class, late_rewind_step
from lthdiff.reporting import study as RS
from lthdiff.data import load_dataset
from lthdiff.lottery import run_imp
from lthdiff.store import CorruptFileError
from lthdiff.models import unet
from lthdiff.lottery import IMPResult, RoundInfo
from lthdiff.training import make_scheduler
from lthdiff.training import loss_at_start, train

SETTINGS = {"dataset": "digits", "image_size": 16, "preset": "tiny", "steps": 40, "batch_size": 32, "lr": 1e-3,
            "schedule": [0.5, 0.75], "rewind": "init", "controls": ["random_reinit"], "n": 2000, "sample_steps": 10,
            "extractor": "lthdiff-digits"}


def test_loss_at_start_against_the_ddpm_formula():
    ds = load_dataset("digits", image_size=16)
    model = unet("tiny", seed=5)
    before = copy.deepcopy(model.state_dict())
    mask = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(2)) > 0.5
            for k, v in model.named_parameters() if v.dim() > 1}
    got = loss_at_start(model, ds, mask, n=64, seed=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    # independent: the same 64 images, eps and t; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. Eq. 4)
    g = torch.Generator().manual_seed(7)
    x0 = torch.stack([ds[int(i)] for i in torch.randperm(len(ds), generator=g)[:64]])
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    abar = make_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for k, p in net.named_parameters():
            if k in mask:
                p.mul_(mask[k])
        want = F.mse_loss(net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t).sample, eps).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(loss_at_start(model, ds, n=64, seed=7), rel=1e-3)  # the mask is applied
    with pytest.raises(ValueError, match="n must be a positive int"):
        loss_at_start(model, ds, n=0)


