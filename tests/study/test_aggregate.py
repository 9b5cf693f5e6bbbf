"""A study's aggregate from hand-made records: counts, means, stds, seeds won, matching sparsity, convergence."""
import copy
import os
import json
import math
import shutil
import statistics

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


def _row(seed, r, variant, sparsity, fid, **kw):
    base = {"seed": seed, "round": r, "variant": variant, "sparsity": sparsity, "fid": fid, "kid": fid / 10,
            "kid_test": fid / 5, "fid_test": fid * 2, "final_loss": 0.05, "loss_at_init": 1.0, "steps": 40,
            "loss_per_100_steps": [0.1] * 10}
    return {**base, **kw}


def _hand_made_study(root, fids, conts=None):
    """fids[seed] = (dense, [(ticket, reinit) per round]); conts[seed] = dense continued FID."""
    for seed, (dense, rounds) in fids.items():
        d = root / f"seed_{seed}"
        R.write_settings(d, {**SETTINGS, "seed": seed, "init_digest": f"digest{seed}"})
        R.write_network(d, _row(seed, 0, "ticket", 0.0, dense, loss_at_init=1.1))
        if conts:
            R.write_network(d, _row(seed, 0, "dense_half", 0.0, dense * 1.5, steps=20))
            R.write_network(d, _row(seed, 0, "dense_continued", 0.0, conts[seed], steps=60,
                                    loss_per_100_steps=[0.1] * 15))
        for r, ((t, c), sp) in enumerate(zip(rounds, SETTINGS["schedule"]), start=1):
            R.write_network(d, _row(seed, r, "ticket", sp, t, loss_at_init=0.3))
            R.write_network(d, _row(seed, r, "random_reinit", sp, c, loss_at_init=1.0))


def test_aggregate_from_hand_made_records(tmp_path):
    fids = {0: (1.0, [(0.9, 1.2), (1.3, 1.1)]), 1: (1.2, [(1.0, 1.5), (1.6, 1.4)]), 2: (1.1, [(1.2, 1.0), (1.5, 2.0)])}
    _hand_made_study(tmp_path, fids, conts={0: 1.02, 1: 1.5, 2: 1.1})
    agg = A.aggregate_records(tmp_path)
    assert agg["complete"] is True and agg["seeds"] == [0, 1, 2]
    # independent arithmetic: dense mean 1.1, sample std 0.1 -> bound 1.2
    dense = [1.0, 1.2, 1.1]
    bound = sum(dense) / 3 + math.sqrt(sum((x - 1.1) ** 2 for x in dense) / 2)
    m = agg["matching"]
    assert m["bound"] == pytest.approx(bound)
    # 50 %: mean(0.9, 1.0, 1.2) = 1.033 <= 1.2 matches; 75 %: mean(1.3, 1.6, 1.5) = 1.467 misses
    assert m["sparsity"] == pytest.approx(0.5) and m["first_miss"] == pytest.approx(0.75)
    t50 = next(r for r in agg["table"] if r["variant"] == "ticket" and r["sparsity"] == 0.5)
    assert t50["ratio_to_dense_per_seed"] == pytest.approx({0: 0.9, 1: 1.0 / 1.2, 2: 1.2 / 1.1})
    wins = {v["sparsity"]: v["ticket_wins"] for v in agg["versus"]["random_reinit"]}
    assert wins == {0.5: 2, 0.75: 1}  # 50 %: seeds 0, 1; 75 %: seed 2
    conv = {c["seed"]: c for c in agg["convergence"]}
    tol = max(agg["matching"]["dense_std"], 0.05 * 1.2)  # seed 1: |1.5 - 1.2| = 0.3 > tol
    assert conv[0]["converged"] is True and conv[1]["converged"] is False
    assert conv[1]["fid_tolerance"] == pytest.approx(tol) and conv[0]["fid_half"] == pytest.approx(1.5)
    # over seeds: 1.5 T - T = 0.02, 0.3, 0.0 -> mean 0.1067 > tolerance max(std 0.1, 5 % of 1.1) = 0.1
    o = agg["convergence_overall"]
    assert o["deltas"] == pytest.approx([0.02, 0.3, 0.0]) and o["delta_mean"] == pytest.approx(0.32 / 3)
    assert o["fid_tolerance"] == pytest.approx(0.1) and o["converged"] is False and o["seeds_within"] == 2
    init = {(r["sparsity"], r["variant"]): r["loss_at_init_mean"] for r in agg["loss_at_init"]}
    assert init[(0.0, "dense")] == pytest.approx(1.1) and init[(0.5, "ticket")] == pytest.approx(0.3)
    # the dense_half / dense_continued rows never count as dense in the verdict
    assert next(r for r in agg["table"] if r["variant"] == "dense")["seeds"] == 3
    md = RS.markdown("study", agg)
    assert "**50.0%**" in md and "first miss at 75.0%" in md and "Partial" not in md
    text = RS.study_summary(agg)  # the sentence the README and notebook 04 show, every number from agg
    assert "up to **50.0%** sparsity" in text and "first sparsity that misses is 75.0%" in text
    assert "50.0%: 0.941 ± 0.13 (0.9, 0.833, 1.09)" in text  # mean and sample std of 0.9, 1/1.2, 1.2/1.1
    assert "against random_reinit: 50.0% 2/3, 75.0% 1/3" in text
    assert "Dense converged at T in 2/3 seeds" in text and "seed 1: 1.8, 1.2, 1.5" in text
    assert "mean FID moved +0.107 ± 0.17 from T to 1.5 T: not converged on average" in text
    assert "**not converged**; 2/3 seeds within" in md
    assert "theta_0 1.1, ticket theta_0 * m 0.3 at 75.0%, random_reinit 1" in text


def test_aggregate_refuses_mixed_settings_and_says_partial(tmp_path):
    _hand_made_study(tmp_path, {0: (1.0, [(0.9, 1.2)]), 1: (1.1, [(1.0, 1.3)])})
    s = json.loads((tmp_path / "seed_1" / "settings.json").read_text())
    (tmp_path / "seed_1" / "settings.json").write_text(json.dumps({**s, "lr": 2e-3}))
    with pytest.raises(ValueError, match=r"lr: 0.001 \(seed 0\) vs 0.002 \(seed 1\)"):
        A.aggregate_records(tmp_path)
    (tmp_path / "seed_1" / "settings.json").write_text(json.dumps(s))
    agg = A.aggregate_records(tmp_path)
    assert agg["complete"] is False and agg["networks_recorded"] == {0: 3, 1: 3}
    assert "Partial" in RS.markdown("study", agg)


def test_aggregate_cli_writes_next_to_the_records(tmp_path, study_cli):
    _hand_made_study(tmp_path / "mystudy", {0: (1.0, [(0.9, 1.2), (1.0, 1.1)])})
    assert study_cli("aggregate", tmp_path / "mystudy") == 0
    payload = json.loads((tmp_path / "mystudy" / "mystudy.json").read_text())
    assert payload["matching"]["sparsity"] == pytest.approx(0.75)
    assert study_cli("aggregate", tmp_path / "nothing_here") == 2
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- study -->\nold answer\n<!-- /study -->\n\nrest\n")
    assert study_cli("aggregate", tmp_path / "mystudy", "--readme", readme) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n<!-- study -->\n**digits") and text.endswith("\n<!-- /study -->\n\nrest\n")
    assert "old answer" not in text and "up to **75.0%** sparsity" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="<!-- study -->"):
        RS.update_readme(readme, "x")
    assert readme.read_text() == "no markers\n"  # untouched


def test_summary_reports_the_prune_and_continue_arm(tmp_path):
    fids = {0: (1.0, [(0.9, 1.2), (1.3, 1.1)]), 1: (1.2, [(1.0, 1.5), (1.6, 1.4)])}
    _hand_made_study(tmp_path, fids, conts={0: 1.0, 1: 1.2})
    for seed, fid in ((0, 0.8), (1, 1.2)):  # per seed FID / dense: 0.8 / 1.0 and 1.2 / 1.2
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 1, "continue", 0.5, fid, loss_at_init=0.05))
    agg = A.aggregate_records(tmp_path)
    assert agg["complete"] is True  # the continue arm never makes the ticket arm partial
    text = RS.study_summary(agg)
    # mean(0.8, 1.0) = 0.9, sample std sqrt(0.02) = 0.141; the ticket (0.9, 1.0) wins seed 1 only
    assert "Prune and continue" in text and "50.0%: 0.9 ± 0.14 (2 seeds)" in text
    # dense 1.0, 1.2: bound 1.1 + 0.141; continue's mean FID 1.0 at 50 % matches, 75 % is not recorded yet
    assert "it matches up to 50.0% so far (not yet recorded at 75.0%)" in text
    for seed, fid in ((0, 1.5), (1, 1.4)):
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 2, "continue", 0.75, fid, loss_at_init=0.05))
    assert "it matches up to 50.0% (first miss 75.0%)" in RS.study_summary(A.aggregate_records(tmp_path))
    assert "against continue: 50.0% 1/2" in text
    for seed, fid in ((0, 1.3), (1, 1.3)):  # late rewinding: mean 1.3 > the bound 1.241 at 50 %
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 1, "late", 0.5, fid, rewind_step=2))
    agg = A.aggregate_records(tmp_path)
    text = RS.study_summary(agg)
    assert agg["complete"] is True and "Late rewinding to theta_K (K = T / 20 = 2 steps" in text
    assert "it matches up to 0.0% (first miss 50.0%)" in text and "against late: 50.0% 2/2" in text


def test_mask_overlap_of_the_arms_from_recorded_masks(tmp_path):
    d = tmp_path / "seed_0"
    d.mkdir()
    keep = lambda *idx: {"w": torch.tensor([i in idx for i in range(8)])}
    M.save_packed(d / "mask_r02.npz", keep(0, 1))
    M.save_packed(d / "mask_continue_r02.npz", keep(1, 2))
    M.save_packed(d / "mask_late_r03.npz", keep(5))  # round 3 of one arm only: no pair
    rows = A.mask_overlap(tmp_path)
    assert len(rows) == 1
    (row,) = rows
    # kept {0, 1} and {1, 2}: intersection 1, union 3; two independent masks at density 1/4: 1/16 / (7/16)
    assert row["pair"] == "ticket / continue" and row["round"] == 2 and row["sparsity"] == pytest.approx(0.75)
    assert row["jaccard_mean"] == pytest.approx(1 / 3) and row["chance_jaccard"] == pytest.approx(1 / 7)
    assert "## Do the arms find the same weights?" in RS.overlap_markdown(rows)




def test_the_moved_recorded_study_aggregates_to_its_committed_page():
    """The repository's study, moved into the package, rebuilds its Markdown byte for byte from the records."""
    from lthdiff.study import RECORDED

    d = RECORDED / "quality_digits_converged"
    agg = A.aggregate_records(d)
    assert RS.markdown(d.name, agg) == (d / f"{d.name}.md").read_text()
    committed = json.loads((d / f"{d.name}.json").read_text())
    assert committed["matching"] == json.loads(json.dumps(agg["matching"]))
    assert committed["table"] == json.loads(json.dumps(agg["table"]))


def test_a_control_run_only_from_a_later_round_is_described_from_its_own_networks():
    """control_rounds = [3, ...]: random reinit has no network at 50 %, by design; the text says where it was run
    and whether it matched there, not "0 % so far"."""
    table = [{"variant": "random_reinit", "sparsity": s, "fid_mean": f} for s, f in ((0.875, 0.38), (0.9375, 0.5))]
    m = {"variant": "random_reinit", "sparsity": 0.0, "first_miss": 0.5, "bound": 0.393}
    assert RS._matching_text(m, table) == "run from 87.5% on, matches up to 87.5%"
    table[0]["fid_mean"] = 0.62
    assert RS._matching_text(m, table) == "run from 87.5% on, misses already at 87.5%"
    assert RS._matching_text(m, []) == "0.0% so far (not yet recorded at 50.0%)"


def test_memorisation_is_averaged_per_sparsity_and_variant_and_shown_dense_beside_tickets():
    mem = lambda c, r: {"copy_fraction": 1 / 3, "pixels": {"closer_than_test": c, "copy_rate": c / 2, "nn_ratio": r},  # noqa
                        "features": {"closer_than_test": 2 * c, "copy_rate": c, "nn_ratio": r + 0.1}}
    rows = [{"round": 0, "variant": "ticket", "sparsity": 0.0, "memorisation": mem(0.1, 1.0)},
            {"round": 0, "variant": "ticket", "sparsity": 0.0, "memorisation": mem(0.3, 1.2)},
            {"round": 1, "variant": "ticket", "sparsity": 0.5, "memorisation": mem(0.0, 1.5)},
            {"round": 1, "variant": "ticket", "sparsity": 0.5}]  # scored before memorisation was recorded
    t = {(r["sparsity"], r["variant"]): r for r in A.memorisation_table(rows)}
    assert set(t) == {(0.0, "dense"), (0.5, "ticket")} and t[(0.5, "ticket")]["seeds"] == 1
    d = t[(0.0, "dense")]
    assert d["pixels_closer_than_test_mean"] == pytest.approx(0.2)
    assert d["pixels_closer_than_test_std"] == pytest.approx(statistics.stdev([0.1, 0.3]))
    assert d["features_closer_than_test_mean"] == pytest.approx(0.4) and d["features_nn_ratio_mean"] == pytest.approx(1.2)
    md = RS.memorisation_markdown(A.memorisation_table(rows), "lthdiff-digits")
    assert "| 0.0% | dense | 2 | 0.2 ± 0.1 / 0.4 ± 0.3 |" in md and "`lthdiff-digits` features" in md
    assert RS.memorisation_markdown([], "x") == ""
