"""Structured lottery tickets: rewound survivors, scratch and fine-tune arms (lthdiff/pruners/structured/tickets.py)."""
import pytest
import torch

from lthdiff.models import unet
from lthdiff.pruners.channels import ARMS, StructuredArms, rewind_structured, structured, ticket
from lthdiff.pruners.channels.structure import unet_config
from lthdiff.pruners.channels.tickets import fresh

RATIO = [0.5, 0.5, 0.5]
TIME = dict(time_embedding_ratio=0.5, progress=False)  # also prune the time-embedding MLP


def _randomised(seed):
    """A stand-in for trained weights: the values of each tensor are distinct (a random permutation of
    k / n - 1/2, exact in float32), so each weight of a pruned copy traces back to the one position it came from."""
    model = unet("tiny", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_((torch.randperm(n, generator=g).double() / n - 0.5).float().view(p.shape))
    return model


@pytest.fixture(scope="module")
def init():
    return unet("tiny", seed=0)  # theta_0


@pytest.fixture(scope="module")
def trained():
    return _randomised(5)


@pytest.fixture(scope="module")
def arms(trained, init):
    return ticket(trained, init.state_dict(), RATIO, **TIME)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def traced_indices(dense: torch.Tensor, small: torch.Tensor) -> list[torch.Tensor]:
    """Per axis, the index into ``dense`` of each position of ``small`` (a sub-tensor picked axis by axis),
    found by locating every value of ``small`` in ``dense`` (whose values are all distinct)."""
    flat = dense.flatten().tolist()
    where = {v: i for i, v in enumerate(flat)}
    assert len(where) == len(flat), "dense values must be distinct to trace them"
    pos = torch.tensor([where[v] for v in small.flatten().tolist()])
    coords = torch.stack(torch.unravel_index(pos, dense.shape), -1).view(*small.shape, dense.dim())
    out = []
    for axis in range(dense.dim()):
        c = coords[..., axis].movedim(axis, 0).reshape(small.shape[axis], -1)
        assert (c == c[:, :1]).all(), f"axis {axis} is not picked independently of the others"
        out.append(c[:, 0])
    return out


def pick(t: torch.Tensor, idx: list[torch.Tensor]) -> torch.Tensor:
    for axis, i in enumerate(idx):
        t = t.index_select(axis, i)
    return t


def test_every_ticket_tensor_is_theta0_at_the_indices_the_pruner_took_from_the_trained_weights(trained, init, arms):
    # The indices are traced independently of torch-pruning: where each fine-tune weight sits in the trained net.
    dense, small, theta0, tick = _state(trained), _state(arms.finetune), _state(init), _state(arms.ticket)
    assert set(tick) == set(small)
    checked = 0
    for name, w in small.items():
        if name.startswith("time_embedding.linear_1."):
            continue  # refitted in the fine-tune arm, so not traceable; checked against info.kept below
        idx = traced_indices(dense[name], w)
        assert torch.equal(tick[name], pick(theta0[name], idx)), name
        checked += w.shape != dense[name].shape
    assert checked > 100  # conv in/out channels, GroupNorms, attention, time MLP all pruned
    assert traced_indices(dense["conv_in.weight"], small["conv_in.weight"])[0].tolist() == arms.info.kept["conv_in"]


def test_ticket_layers_equal_theta0_indexed_by_the_kept_channels(init, arms):
    kept, t0, tick = arms.info.kept, _state(init), _state(arms.ticket)
    k_in, k1 = kept["conv_in"], kept["down_blocks.0.resnets.0.conv1"]
    kt1, kt2 = kept["time_embedding.linear_1"], kept["time_embedding.linear_2"]
    assert len(k_in) == 16 and len(kt1) == len(kt2) == 64
    r = "down_blocks.0.resnets.0."
    expect = {
        "conv_in.weight": t0["conv_in.weight"][k_in],
        "conv_in.bias": t0["conv_in.bias"][k_in],
        r + "norm1.weight": t0[r + "norm1.weight"][k_in],  # GroupNorm on the residual stream
        r + "conv1.weight": t0[r + "conv1.weight"][k1][:, k_in],  # conv out and in channels
        r + "norm2.bias": t0[r + "norm2.bias"][k1],
        r + "conv2.weight": t0[r + "conv2.weight"][k_in][:, k1],  # back onto the residual stream
        r + "time_emb_proj.weight": t0[r + "time_emb_proj.weight"][k1][:, kt2],
        "time_embedding.linear_2.weight": t0["time_embedding.linear_2.weight"][kt2][:, kt1],
        "time_embedding.linear_1.bias": t0["time_embedding.linear_1.bias"][kt1],
        # input: the 8 kept (highest) frequencies of the cos half and of the sin half of the 32-d sinusoid
        "time_embedding.linear_1.weight": t0["time_embedding.linear_1.weight"][kt1][:, [*range(8), *range(16, 24)]],
    }
    for name, want in expect.items():
        assert torch.equal(tick[name], want), name


def test_finetune_arm_is_the_pruned_trained_model(trained, arms):
    pruned = structured(trained, RATIO, **TIME)
    a, b = _state(pruned), _state(arms.finetune)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_structured_rewind_to_returns_the_ticket(trained, init, arms):
    small = structured(trained, RATIO, rewind_to=init, **TIME)
    a, b = _state(small), _state(arms.ticket)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scratch_has_the_architecture_and_other_weights(arms):
    cfg = unet_config(arms.finetune)
    assert unet_config(arms.ticket) == cfg == unet_config(arms.scratch) == arms.config
    s, t, f = _state(arms.scratch), _state(arms.ticket), _state(arms.finetune)
    assert {k: v.shape for k, v in s.items()} == {k: v.shape for k, v in t.items()}
    for k, v in s.items():
        if v.dim() >= 2:
            assert not torch.equal(v, t[k]) and not torch.equal(v, f[k]), k
    x, ts = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        outs = [m(x, ts).sample for m in arms.arms().values()]
    assert all(o.shape == x.shape and torch.isfinite(o).all() for o in outs)
    assert list(arms.arms()) == list(ARMS)


def test_same_seed_same_arms_other_scratch_seed_other_scratch(trained, init):
    from lthdiff.data import load_dataset

    ds = load_dataset("digits", image_size=16)
    kw = dict(importance="diff_pruning", data=ds, batch_size=4, timesteps=3, seed=1, progress=False)
    a, b = ticket(trained, init, RATIO, **kw), ticket(trained, init, RATIO, **kw)
    for arm in ARMS:
        sa, sb = _state(getattr(a, arm)), _state(getattr(b, arm))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), arm
    assert a.info.kept == b.info.kept
    c = ticket(trained, init, RATIO, scratch_seed=7, **kw)
    assert not torch.equal(c.scratch.conv_in.weight, a.scratch.conv_in.weight)
    assert torch.equal(c.scratch.conv_in.weight, fresh(a.config, 7).conv_in.weight)


def test_rewinding_a_later_state_takes_that_state(trained, arms):
    theta_k = _randomised(9).state_dict()  # any state of the architecture, e.g. a checkpoint at step k
    small = rewind_structured(trained, theta_k, arms.info)
    idx = traced_indices(trained.state_dict()["down_blocks.1.attentions.0.to_q.weight"],
                         arms.finetune.state_dict()["down_blocks.1.attentions.0.to_q.weight"])
    assert torch.equal(small.state_dict()["down_blocks.1.attentions.0.to_q.weight"],
                       pick(theta_k["down_blocks.1.attentions.0.to_q.weight"], idx))


def test_inputs_are_not_modified(trained, init, arms):
    before = _state(init)
    ticket(trained, init, RATIO, **TIME)
    assert all(torch.equal(before[k], v) for k, v in _state(init).items())


def test_rewind_state_of_another_architecture_is_refused(trained, init):
    other = unet("tiny", seed=0, block_out_channels=(16, 32, 32))
    with pytest.raises(ValueError, match="differ in shape.*same architecture"):
        ticket(trained, other.state_dict(), RATIO, **TIME)
    with pytest.raises(ValueError, match="missing keys"):
        ticket(trained, unet("mnist32", seed=0), RATIO, **TIME)


def test_wrong_keys_and_types_are_refused(trained, init, arms):
    state = dict(init.state_dict())
    state["conv_in.weights"] = state.pop("conv_in.weight")
    with pytest.raises(ValueError, match=r"1 missing keys \['conv_in.weight'\].*1 unexpected keys \['conv_in.weights'\]"):
        rewind_structured(trained, state, arms.info)
    with pytest.raises(TypeError, match="state dict .* or a UNet"):
        ticket(trained, [1, 2], RATIO, **TIME)
    with pytest.raises(ValueError, match="sets return_info itself"):
        ticket(trained, init, RATIO, return_info=True, **TIME)


def test_info_of_another_unet_is_refused(init):
    small = unet("tiny", seed=0, block_out_channels=(16, 32, 32))
    _, info = structured(small, 0.5, return_info=True, progress=False)
    with pytest.raises(ValueError, match="info was recorded on a UNet"):
        rewind_structured(init, init, info)
    assert isinstance(ticket(small, small, 0.5, progress=False), StructuredArms)
