"""The verdict over seeds and the convergence rules of a study, on hand-made rows (no training)."""
import math

import pytest

from lthdiff.study.aggregate import converged, loss_plateau
from lthdiff.evaluation import aggregate, matching_sparsity, sparsities, summarize, ticket_vs_control


def _rows(table):
    """table: {(round, sparsity, variant): [fid per seed 0, 1, ...]} -> benchmark rows."""
    out = []
    for (rnd, sp, variant), fids in table.items():
        for seed, f in enumerate(fids):
            out.append({"seed": seed, "round": rnd, "sparsity": sp, "variant": variant, "fid": f,
                        "kid": f / 100, "final_loss": 0.1})
    return out


DENSE = (0, 0.0, "ticket")


def test_matching_sparsity_stops_at_the_first_miss_even_if_later_ones_match():
    # dense mean 10, std 1 -> bound 11; 50% matches, 75% misses (11.5), 87.5% is back under the bound
    rows = _rows({DENSE: [9.0, 10.0, 11.0], (1, 0.5, "ticket"): [10.0, 10.5, 11.0],
                  (2, 0.75, "ticket"): [11.0, 11.5, 12.0], (3, 0.875, "ticket"): [10.0, 10.0, 10.0]})
    m = matching_sparsity(rows)
    assert m["bound"] == pytest.approx(11.0)
    assert m["sparsity"] == 0.5 and m["first_miss"] == 0.75


def test_matching_sparsity_all_match_and_none_match():
    rows = _rows({DENSE: [9.0, 10.0, 11.0], (1, 0.5, "ticket"): [9.0, 9.0, 9.0], (2, 0.75, "ticket"): [11.0, 11.0, 11.0]})
    assert matching_sparsity(rows)["sparsity"] == 0.75 and matching_sparsity(rows)["first_miss"] is None
    rows = _rows({DENSE: [9.0, 10.0, 11.0], (1, 0.5, "ticket"): [12.0, 12.0, 12.0]})
    assert matching_sparsity(rows)["sparsity"] == 0.0 and matching_sparsity(rows)["first_miss"] == 0.5
    with pytest.raises(ValueError, match="dense"):
        matching_sparsity([r for r in rows if r["round"] > 0])


def test_seeds_won_and_per_seed_ratios():
    rows = _rows({DENSE: [10.0, 10.0, 10.0], (1, 0.5, "ticket"): [10.0, 12.0, 8.0],
                  (1, 0.5, "random_reinit"): [20.0, 11.0, 8.0]})
    (v,) = ticket_vs_control(rows, "random_reinit")
    assert v["ticket_wins"] == 1 and v["seeds"] == 3  # a tie (seed 2) is not a win
    assert v["ratio_per_seed"] == {0: 0.5, 1: pytest.approx(12 / 11), 2: 1.0}


def test_aggregate_ratios_are_per_seed():
    rows = _rows({DENSE: [10.0, 20.0], (1, 0.5, "ticket"): [20.0, 20.0]})
    by = {r["variant"]: r for r in aggregate(rows)}
    assert by["dense"]["fid_mean"] == 15.0 and by["dense"]["ratio_to_dense_mean"] == 1.0
    # per seed: 20/10 = 2 and 20/20 = 1 -> mean 1.5 (not 20 / 15)
    assert by["ticket"]["ratio_to_dense_mean"] == 1.5
    assert by["ticket"]["ratio_to_dense_per_seed"] == {0: 2.0, 1: 1.0}
    assert by["ticket"]["fid_std"] == 0.0 and by["ticket"]["ratio_to_dense_std"] == pytest.approx(math.sqrt(0.5))
    assert sparsities(rows) == [0.5]


def test_summarize_carries_kid_and_controls():
    rows = _rows({DENSE: [10.0, 11.0], (1, 0.5, "ticket"): [10.0, 11.0], (1, 0.5, "random_reinit"): [30.0, 31.0]})
    s = summarize(rows, ["random_reinit"])
    ticket = next(r for r in s["table"] if r["variant"] == "ticket")
    assert ticket["kid_mean"] == pytest.approx(0.105)
    assert s["versus"]["random_reinit"][0]["ticket_wins"] == 2
    assert s["matching_controls"]["random_reinit"]["sparsity"] == 0.0


def test_loss_plateau_windows():
    losses = [float(i) for i in range(100)]
    p = loss_plateau(losses)
    assert p["mid_mean"] == pytest.approx(sum(range(40, 50)) / 10)  # the 10 % before T/2
    assert p["late_mean"] == pytest.approx(sum(range(90, 100)) / 10)
    assert loss_plateau([1.0] * 40)["ratio"] == 1.0
    with pytest.raises(ValueError, match="at least"):
        loss_plateau([1.0, 2.0, 3.0], fraction=0.5)


def test_converged_needs_both_fid_and_loss_plateau():
    assert converged(10.0, 10.4, 0.97, fid_tolerance=0.5)
    assert not converged(10.0, 11.0, 0.97, fid_tolerance=0.5)  # FID still moving
    assert not converged(10.0, 10.1, 0.80, fid_tolerance=0.5)  # loss still falling
    assert converged(12.0, 11.6, 1.04, fid_tolerance=0.5)  # improving within tolerance counts
