"""TensorBoard events of an IMP run: loss curves, sparsity, per-block sparsity, eval metrics, sample grid."""
import pytest
import torch

from lthdiff.tracking import tb
from lthdiff.lottery import run_imp


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb.log_dir(run_dir)), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_run_imp_and_log_eval_write_events(small_digits, micro_unet, tmp_path):
    run = tmp_path / "run"
    res = run_imp(micro_unet, small_digits, rounds=1, steps_per_round=6, run_dir=run, batch_size=16,
                  controls=("random_reinit",), checkpoint_every=100, progress=False)
    from lthdiff.evaluation import image_grid, sample

    r1 = res.rounds[1]
    image_grid(sample(r1.load_model(), 4, steps=2, progress=False)).save(r1.dir / "samples.png")
    tb.log_eval(run, 1, "ticket", {"fid": 12.5, "ssim": 0.75, "perceptual_kind": "ignored"}, r1.dir / "samples.png")
    acc = _events(run)
    tags = set(acc.Tags()["scalars"])
    assert {"loss/round_00/ticket", "loss/round_01/ticket", "loss/round_01/random_reinit",
            "sparsity/ticket", "eval/fid/ticket", "eval/ssim/ticket"} <= tags
    assert any(t.startswith("block_sparsity/down_blocks.") for t in tags)
    assert len(acc.Scalars("loss/round_01/ticket")) == 6
    assert [e.value for e in acc.Scalars("sparsity/ticket")] == pytest.approx([0.0, r1.sparsity])
    assert acc.Scalars("eval/fid/ticket")[0].value == pytest.approx(12.5)
    assert "samples/ticket" in acc.Tags()["images"]


def test_block_of():
    assert tb.block_of("down_blocks.1.resnets.0.conv1.weight") == "down_blocks.1"
    assert tb.block_of("mid_block.attentions.0.to_q.weight") == "mid_block"
    assert tb.block_of("conv_in.weight") == "conv_in"
