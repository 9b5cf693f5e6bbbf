"""The structured arm: from the recorded dense weights alone, its ticket / scratch / fine-tune start where their
definitions say, train through the engine, and aggregate by hand."""
import json

import pytest
import torch

from lthdiff import masks as M
from lthdiff.data import load_dataset
from lthdiff.models import unet
from lthdiff.pruners.channels import config_macs, ratio_for_macs, ticket
from lthdiff.study import aggregate as A
from lthdiff.study import load_spec, records as R
from lthdiff.study.arms import variant_class
from lthdiff.study.engine import SeedContext

from tiny_study import write_config


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_structured_arms_start_where_their_definitions_say_and_aggregate(tmp_path, study_cli):
    cfg = write_config(tmp_path / "c.toml", seeds=(1,), controls=(), arms=("ticket", "structured"),
                       structured_reductions=[0.5], structured_importances=["magnitude"])
    assert study_cli("run", cfg, "--records", tmp_path / "rec", "--run-root", tmp_path / "runs") == 0
    rec = tmp_path / "rec" / "s" / "seed_1"
    names = sorted(p.name for p in rec.glob("r00_structured_*.json"))
    assert names == ["r00_structured_continued_50_magnitude.json", "r00_structured_finetune_50_magnitude.json",
                     "r00_structured_half_50_magnitude.json", "r00_structured_scratch_50.json",
                     "r00_structured_ticket_50_magnitude.json"]
    # independently: the recorded dense weights, pruned by the library's channel pruner
    theta0 = unet("tiny", seed=1)
    dense = unet("tiny", seed=1)
    dense.load_state_dict(R.load_kept_weights(rec / "weights_r00.safetensors", theta0.state_dict(), M.ones(theta0)))
    arms = ticket(dense, theta0, ratio_for_macs(dense, 0.5, per_level=True), importance="magnitude",
                  data=load_dataset("digits", image_size=16), seed=1, progress=False)
    spec = load_spec(cfg, records=tmp_path / "rec", run_root=tmp_path / "fresh")
    ctx = SeedContext(spec.config, spec.settings, 1, rec, tmp_path / "fresh" / "seed_1")
    variants = {k: f"structured_{k}_50" + ("" if k == "scratch" else "_magnitude") for k in ("ticket", "scratch", "finetune")}
    for kind, variant in variants.items():
        job = variant_class(variant, 0).job(ctx, 0)
        assert _same(job.start, getattr(arms, kind)), kind
        row = json.loads((rec / f"r00_{variant}.json").read_text())
        assert row["macs_ratio"] == pytest.approx(config_macs(job.start) / config_macs(theta0)) and row["macs_ratio"] <= 0.52
        assert row["steps"] == 20 and row["sparsity"] == 0.0
    assert not _same(arms.ticket, arms.scratch) and not _same(arms.ticket, arms.finetune)
    # the ticket's convergence check: its T/2 snapshot scored, and the ticket trained on from its checkpoint
    row_of = lambda v: json.loads((rec / f"r00_{v}.json").read_text())  # noqa: E731
    t, half, cont = (row_of(f"structured_{k}_50_magnitude") for k in ("ticket", "half", "continued"))
    assert half["steps"] == 10 and half["from_snapshot"] and cont["steps"] == 30 and cont["continued_from_step"] == 20
    assert half["loss_at_init"] == pytest.approx(t["loss_at_init"])  # the small ticket's own start, not dense's
    # the snapshot is the network the fall-back job trains again from the ticket's start (deterministic)
    from lthdiff.lottery.network import snapshot_ema_dir, train_network
    from lthdiff.models.unets import load_model

    (snap,) = (tmp_path / "runs").rglob("round_00_structured_half_50_magnitude")
    redo = variant_class("structured_half_50_magnitude", 0).job(
        SeedContext(spec.config, spec.settings, 1, rec, tmp_path / "redo" / "seed_1"), 0)
    assert redo.steps == 10 and _same(redo.start, arms.ticket)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.config.study.threads)  # as the study's worker trains: another count rounds otherwise
    try:
        again = train_network(redo, load_dataset("digits", image_size=16), progress=False, **ctx.train_kw)
    finally:
        torch.set_num_threads(threads)
    assert _same(again.load_model(ema=True), load_model(snapshot_ema_dir(snap)))
    agg = A.aggregate_records(tmp_path / "rec" / "s")
    rows = {r["kind"]: r for r in agg["structured"]}
    fid = {k: json.loads((rec / f"r00_{variants[k]}.json").read_text())["fid"] for k in rows}
    dense_fid = json.loads((rec / "r00_ticket.json").read_text())["fid"]
    assert rows["ticket"]["ratio_to_dense_mean"] == pytest.approx(fid["ticket"] / dense_fid)
    assert rows["ticket"]["wins_vs_scratch"] == (int(fid["ticket"] < fid["scratch"]), 1)
    assert rows["ticket"]["wins_vs_finetune"] == (int(fid["ticket"] < fid["finetune"]), 1)
    assert rows["scratch"]["matches_dense"] == (fid["scratch"] <= dense_fid)
    (c,) = rows["ticket"]["convergence"]
    assert (c["fid_T"], c["fid_half"], c["fid_1.5T"]) == (t["fid"], half["fid"], cont["fid"])
    assert rows["ticket"]["convergence_overall"]["delta_mean"] == pytest.approx(cont["fid"] - t["fid"])
    assert "half" not in rows and "continued" not in rows  # checks fold into the ticket's row


def test_one_scratch_network_a_reduction_and_the_architecture_is_the_importances_own():
    """Scratch is shared by the importances of a reduction because per-level ratios fix the architecture: checked
    by pruning one UNet with magnitude and with Taylor importance; the plan holds one scratch per reduction."""
    from lthdiff.study.arms import plan, structured_arms

    arms_ = structured_arms([0.5, 0.75], ["magnitude", "taylor"])
    variants = [a.variant for a in arms_]
    # per reduction: ticket + fine-tune per importance, one scratch; then T/2 and 1.5 T of every ticket
    assert len(variants) == len(set(variants)) == 2 * (2 * 2 + 1) + 2 * 2 * 2
    assert variants[-8:] == [f"structured_{k}_{p}_{i}" for p in (50, 75) for i in ("magnitude", "taylor")
                             for k in ("half", "continued")]
    assert [v for v in variants if "scratch" in v] == ["structured_scratch_50", "structured_scratch_75"]
    assert all(variant_class(v, 0).variant == v for v in variants)  # names parse back to the same network
    assert plan({"schedule": [0.5]}, ["structured"], arms_) == [(0, v) for v in variants]
    trained, theta0 = unet("tiny", seed=3), unet("tiny", seed=4)
    ds = load_dataset("digits", image_size=16)
    ratio = ratio_for_macs(trained, 0.75, per_level=True)
    mag = ticket(trained, theta0, ratio, importance="magnitude", seed=0, progress=False)
    tay = ticket(trained, theta0, ratio, importance="taylor", data=ds, seed=0, progress=False)
    assert dict(mag.scratch.config) == dict(tay.scratch.config) and _same(mag.scratch, tay.scratch)
    assert not _same(mag.ticket, tay.ticket)  # the importances do keep other channels
    with pytest.raises(ValueError, match="scratch takes none"):
        variant_class("structured_scratch_50_taylor", 0)
