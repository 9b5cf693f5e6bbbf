"""The headline verdict: per-seed ratios, seeds won, matching, on hand-made rows and fabricated run directories."""
from __future__ import annotations

import math

import pytest

from lthdiff.store import write_json
from lthdiff.evaluation import headline, headline_text, matching_sparsity, quality_metric, rows_from_runs

DENSE = {0: 10.0, 1: 12.0, 2: 14.0}            # mean 12, sample std 2 -> matching bound 14
TICKET = {0.5: {0: 9.0, 1: 12.0, 2: 13.0},     # mean 11.33: matches
          0.75: {0: 15.0, 1: 16.0, 2: 17.0}}   # mean 16: misses
REINIT = {0.5: {0: 10.0, 1: 11.0, 2: 14.0},    # ticket wins seeds 0 and 2
          0.75: {0: 20.0, 1: 15.5, 2: 18.0}}   # ticket wins seeds 0 and 2 again


def _rows() -> list[dict]:
    rows = [{"seed": s, "round": 0, "variant": "ticket", "sparsity": 0.0, "fid": v} for s, v in DENSE.items()]
    for r, sp in enumerate(TICKET, start=1):
        rows += [{"seed": s, "round": r, "variant": "ticket", "sparsity": sp, "fid": v} for s, v in TICKET[sp].items()]
        rows += [{"seed": s, "round": r, "variant": "random_reinit", "sparsity": sp, "fid": v}
                 for s, v in REINIT[sp].items()]
    return rows


def test_headline_cells():
    t = headline(_rows())
    assert list(t.columns) == ["sparsity", "weights left", "ticket FID", "ticket / dense", "ticket / random_reinit",
                               "won vs random_reinit", "matches dense"]
    assert t.attrs["metric"] == "fid" and t.attrs["seeds"] == 3 and t.attrs["bound"] == pytest.approx(14.0)
    dense, half, quarter = (t.iloc[i] for i in range(3))
    assert dense["sparsity"] == "0 % (dense)" and dense["ticket FID"] == "12 ± 2" and dense["ticket / dense"] == "1"
    assert half["sparsity"] == "50.0 %" and half["weights left"] == "50 %"
    ratios = [TICKET[0.5][s] / DENSE[s] for s in DENSE]
    mean = sum(ratios) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in ratios) / 2)
    assert half["ticket / dense"] == f"{mean:.3g} ± {std:.2g}"
    assert half["won vs random_reinit"] == "2/3" and quarter["won vs random_reinit"] == "2/3"
    assert half["matches dense"] == "yes" and quarter["matches dense"] == "no"


def test_headline_text_states_matching_sparsity():
    text = headline_text(_rows())
    assert "mean ± std over 3 seeds" in text
    assert "Matching sparsity: 50.0%" in text and "first miss at 75.0%" in text
    assert matching_sparsity(_rows())["sparsity"] == 0.5


def test_one_seed_says_there_is_no_spread():
    rows = [r for r in _rows() if r["seed"] == 0]
    text = headline_text(rows)
    assert "1 seed, so no spread" in text
    t = headline(rows)
    assert t.iloc[1]["ticket FID"] == "9" and t.iloc[1]["won vs random_reinit"] == "1/1"


def test_unevaluated_rows_fall_back_to_final_loss_and_empty_rows_are_refused():
    rows = [{**r, "final_loss": r["fid"] / 100} for r in _rows()]
    rows[3].pop("fid")
    assert quality_metric(rows) == "final_loss"
    assert "ticket final loss" in headline(rows).columns
    with pytest.raises(ValueError, match="neither an FID nor a final loss"):
        quality_metric([{"seed": 0, "round": 0, "variant": "ticket", "sparsity": 0.0}])
    with pytest.raises(ValueError, match="no dense"):
        headline([r for r in _rows() if r["round"] > 0])


def _fake_run(d, seed: int, fids: list[float]) -> None:
    write_json(d / "config.json", {"method": "imp", "seed": seed})
    for r, fid in enumerate(fids):
        rd = d / f"round_{r:02d}"
        write_json(rd / "summary.json", {"round": r, "sparsity": 1 - 0.5 ** r, "final_loss": 0.1, "steps": 1,
                                         "seconds": 1.0})
        write_json(rd / "metrics.json", {"metrics": {"fid": fid}, "settings": {"n": 10}, "extractor": "x"})


def test_rows_from_runs_one_directory_per_seed(tmp_path):
    _fake_run(tmp_path / "a", 0, [10.0, 8.0])
    _fake_run(tmp_path / "b", 1, [12.0, 13.0])
    rows = rows_from_runs([tmp_path / "a", tmp_path / "b"])
    assert sorted((r["seed"], r["round"], r["fid"]) for r in rows) == [(0, 0, 10.0), (0, 1, 8.0), (1, 0, 12.0),
                                                                       (1, 1, 13.0)]
    assert headline(rows).iloc[1]["ticket / dense"] == f"{(0.8 + 13 / 12) / 2:.3g} ± " \
        f"{math.sqrt(((0.8 - (0.8 + 13 / 12) / 2) ** 2 + (13 / 12 - (0.8 + 13 / 12) / 2) ** 2)):.2g}"
    _fake_run(tmp_path / "c", 0, [1.0, 2.0])
    with pytest.raises(ValueError, match="both have seed 0"):
        rows_from_runs([tmp_path / "a", tmp_path / "c"])


# --------------------------------------------------------------------------- the bound, a second time
def _dense_and(ticket: dict[float, dict[int, float]], dense=DENSE) -> list[dict]:
    rows = [{"seed": s, "round": 0, "variant": "ticket", "sparsity": 0.0, "fid": v} for s, v in dense.items()]
    for r, (sp, by) in enumerate(ticket.items(), start=1):
        rows += [{"seed": s, "round": r, "variant": "ticket", "sparsity": sp, "fid": v} for s, v in by.items()]
    return rows


def test_bound_is_mean_plus_k_std_and_a_tie_matches():
    # dense 10, 12, 14: mean 12, sample std 2 (not the population std 1.63) -> bound 14 at k = 1, 16 at k = 2
    tie = _dense_and({0.5: {0: 13.0, 1: 14.0, 2: 15.0}})  # ticket mean exactly 14: on the bound
    m = matching_sparsity(tie)
    assert m["bound"] == pytest.approx(14.0) and m["sparsity"] == 0.5 and m["first_miss"] is None
    assert headline(tie).iloc[1]["matches dense"] == "yes"
    above = _dense_and({0.5: {0: 13.0, 1: 14.0, 2: 15.03}})  # mean 14.01: just above
    assert matching_sparsity(above)["sparsity"] == 0.0 and matching_sparsity(above)["first_miss"] == 0.5
    assert headline(above).iloc[1]["matches dense"] == "no"
    # mean 15.33 misses at k = 1 (bound 14), matches at k = 2 (bound 16)
    wide = _dense_and({0.5: {0: 15.0, 1: 15.0, 2: 16.0}})
    assert matching_sparsity(wide)["sparsity"] == 0.0
    assert matching_sparsity(wide, k_std=2.0)["bound"] == pytest.approx(16.0)
    assert matching_sparsity(wide, k_std=2.0)["sparsity"] == 0.5


def test_matching_stops_at_the_first_miss_of_a_non_monotone_path():
    # matches at 50 %, misses at 75 %, matches again at 90 %: the matching sparsity is 50 %, not 90 %
    rows = _dense_and({0.5: {0: 11.0, 1: 12.0, 2: 13.0}, 0.75: {0: 16.0, 1: 16.0, 2: 16.0},
                       0.9: {0: 11.0, 1: 12.0, 2: 12.0}})
    m = matching_sparsity(rows)
    assert m["sparsity"] == 0.5 and m["first_miss"] == 0.75
    # the headline's column is per sparsity: 90 % is within the bound on its own
    assert list(headline(rows)["matches dense"]) == ["–", "yes", "no", "yes"]
    assert "Matching sparsity: 50.0%" in headline_text(rows) and "first miss at 75.0%" in headline_text(rows)
