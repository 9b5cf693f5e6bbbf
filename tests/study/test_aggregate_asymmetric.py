"""The aggregate on asymmetric records (unequal seeds, a missing control, an arm missing networks, masks of
different densities), every number computed again here by hand; and the longer-training comparison."""
import math
import statistics

import pytest
import torch

from lthdiff import masks as M
from lthdiff.study import aggregate as A
from lthdiff.study import records as R

SETTINGS = {"dataset": "digits", "image_size": 16, "preset": "tiny", "steps": 40, "batch_size": 32, "lr": 1e-3,
            "schedule": [0.5, 0.75], "rewind": "init", "controls": ["random_reinit"], "n": 2000, "sample_steps": 10,
            "extractor": "lthdiff-digits"}
# seed -> {(round, variant): fid}; seed 1 stops after round 1, seed 2 lacks its round-1 control and round 2
FIDS = {0: {(0, "ticket"): 1.0, (1, "ticket"): 0.9, (1, "random_reinit"): 1.4, (2, "ticket"): 1.3,
            (2, "random_reinit"): 1.2, (1, "continue"): 0.7, (2, "continue"): 1.1},
        1: {(0, "ticket"): 1.4, (1, "ticket"): 1.5, (1, "random_reinit"): 1.45, (1, "continue"): 1.3},
        2: {(0, "ticket"): 1.2, (1, "ticket"): 1.0}}
SPARSITY = {0: 0.0, 1: 0.5, 2: 0.75}


def _study(root, settings=SETTINGS, fids=FIDS):
    for seed, nets in fids.items():
        d = root / f"seed_{seed}"
        R.write_settings(d, {**settings, "seed": seed, "init_digest": f"d{seed}"})
        for (r, v), f in nets.items():
            R.write_network(d, {"seed": seed, "round": r, "variant": v, "sparsity": SPARSITY[r], "fid": f,
                                "kid": f / 10, "kid_test": f / 7, "fid_test": 2 * f, "final_loss": 0.05,
                                "loss_at_init": 1.0, "steps": settings["steps"], "loss_per_100_steps": [0.1]})


def test_counts_means_stds_and_seeds_won_by_hand(tmp_path):
    _study(tmp_path)
    agg = A.aggregate_records(tmp_path)
    table = {(round(r["sparsity"], 3), r["variant"]): r for r in agg["table"]}
    for (sp, variant), key in (((0.5, "ticket"), (1, "ticket")), ((0.75, "ticket"), (2, "ticket")),
                               ((0.5, "random_reinit"), (1, "random_reinit")), ((0.5, "continue"), (1, "continue"))):
        vals = {s: n[key] for s, n in FIDS.items() if key in n}
        row = table[(sp, variant)]
        assert row["seeds"] == len(vals), (sp, variant)
        assert row["fid_mean"] == pytest.approx(statistics.mean(vals.values()))
        assert row["fid_std"] == pytest.approx(statistics.stdev(vals.values()) if len(vals) > 1 else 0.0)
        ratios = {s: f / FIDS[s][(0, "ticket")] for s, f in vals.items()}
        assert row["ratio_to_dense_per_seed"] == pytest.approx(ratios)
        assert row["ratio_to_dense_mean"] == pytest.approx(statistics.mean(ratios.values()))
    # seeds won: only seeds holding both networks count (seed 2 has no round-1 control)
    v50 = next(v for v in agg["versus"]["random_reinit"] if v["sparsity"] == 0.5)
    assert (v50["ticket_wins"], v50["seeds"]) == (1, 2)  # seed 0: 0.9 < 1.4; seed 1: 1.5 > 1.45
    c50 = next(v for v in agg["versus"]["continue"] if v["sparsity"] == 0.5)
    assert (c50["ticket_wins"], c50["seeds"]) == (0, 2)
    dense = [1.0, 1.4, 1.2]
    bound = statistics.mean(dense) + statistics.stdev(dense)
    assert agg["matching"]["bound"] == pytest.approx(bound)
    # 50 %: mean(0.9, 1.5, 1.0) = 1.133 <= 1.4; 75 %: 1.3 (one seed) <= 1.4 too
    assert agg["matching"]["sparsity"] == pytest.approx(0.75) and agg["matching"]["first_miss"] is None
    assert agg["networks_recorded"] == {0: 5, 1: 3, 2: 2} and agg["complete"] is False  # continue is not counted
    assert agg["networks_planned"] == {0: 7, 1: 7, 2: 7}  # dense, T/2, 1.5 T, 2 rounds x (ticket + control)


def test_mask_overlap_chance_level_for_masks_of_different_densities(tmp_path):
    d = tmp_path / "seed_0"
    d.mkdir()
    n = 40
    keep = lambda idx: {"w": torch.tensor([i in idx for i in range(n)])}  # noqa: E731
    a, b = set(range(0, 10)), set(range(5, 25))  # densities 1/4 and 1/2, overlap 5 of union 25
    M.save_packed(d / "mask_r02.npz", keep(a))
    M.save_packed(d / "mask_late_r02.npz", keep(b))
    (row,) = A.mask_overlap(tmp_path)
    assert row["pair"] == "ticket / late" and row["jaccard_mean"] == pytest.approx(5 / 25)
    da, db = 10 / n, 20 / n
    assert row["chance_jaccard"] == pytest.approx(da * db / (da + db - da * db))
    assert row["sparsity"] == pytest.approx(1 - da)


def test_longer_training_compares_at_equal_length_and_recomputes_matching(tmp_path):
    base = {s: {(0, "ticket"): d, (1, "ticket"): t1, (2, "ticket"): t2}
            for s, (d, t1, t2) in {0: (1.0, 1.0, 2.0), 1: (1.2, 1.1, 2.6), 2: (1.1, 1.0, 2.2)}.items()}
    _study(tmp_path / "base", {**SETTINGS, "controls": []}, base)
    long = {0: {(0, "ticket"): 0.8, (0, "dense_half"): 1.05, (2, "ticket"): 0.9},
            1: {(0, "ticket"): 0.9, (0, "dense_half"): 1.15, (2, "ticket"): 1.5}}
    _study(tmp_path / "long", {**SETTINGS, "steps": 80, "controls": [], "rounds_only": [2], "masks_from": "base"}, long)
    out = A.longer_training(tmp_path / "base", tmp_path / "long")
    assert (out["steps_T"], out["steps_L"]) == (40, 80)
    rows = {r["seed"]: r for r in out["rows"]}
    assert set(rows) == {0, 1} and rows[0]["fid_T"] == 2.0 and rows[0]["fid_L"] == 0.9
    assert rows[1]["ratio_T"] == pytest.approx(2.6 / 1.2) and rows[1]["ratio_L"] == pytest.approx(1.5 / 0.9)
    assert out["dense"] == [{"seed": 0, "fid_T": 1.05, "fid_L": 0.8}, {"seed": 1, "fid_T": 1.15, "fid_L": 0.9}]
    (s,) = out["by_sparsity"]
    assert s["seeds"] == 2 and s["ratio_L_mean"] == pytest.approx((0.9 / 0.8 + 1.5 / 0.9) / 2)
    # at 2 T: dense 0.8, 0.9 -> bound 0.85 + 0.0707; tickets mean 1.2 > bound: the first miss is 75 %
    m = out["matching_L"]
    assert m["bound"] == pytest.approx(0.85 + math.sqrt(0.005)) and m["first_miss"] == pytest.approx(0.75)
    assert out["matching_T"]["sparsity"] == pytest.approx(0.5)
