"""The pure aggregation of ``python -m lthdiff.bench early-bird`` on hand-made rows."""
import statistics

import pytest

from lthdiff.bench.early_bird import summarize


def _row(seed, fid_imp, fid_eb, steps_eb, steps_imp=1200):
    return {"seed": seed, "fid_imp": fid_imp, "fid_eb": fid_eb, "steps_imp": steps_imp, "steps_eb": steps_eb}


def test_target_met_when_close_and_cheap():
    rows = [_row(0, 2.0, 2.1, 400), _row(1, 3.0, 3.2, 440), _row(2, 2.5, 2.9, 460)]
    s = summarize(rows)
    assert s["fid_imp_mean"] == pytest.approx(2.5) and s["fid_eb_mean"] == pytest.approx(8.2 / 3)
    assert s["fid_imp_std"] == pytest.approx(statistics.stdev([2.0, 3.0, 2.5]))
    assert s["fid_ratio_per_seed"] == pytest.approx({0: 1.05, 1: 3.2 / 3, 2: 1.16})
    assert s["compute_ratio_mean"] == pytest.approx(1300 / 3 / 1200)
    assert s["target_met"] and s["seeds_meeting"] == 2  # seed 2 alone misses the 10 % band


@pytest.mark.parametrize("rows, fid_ok, compute_ok", [
    ([_row(0, 2.0, 2.3, 400)], False, True),   # 15 % worse
    ([_row(0, 2.0, 2.0, 600)], True, False),   # 50 % of the compute
])
def test_target_missed(rows, fid_ok, compute_ok):
    s = summarize(rows)
    assert (s["fid_ok"], s["compute_ok"], s["target_met"]) == (fid_ok, compute_ok, False)


def test_no_rows_rejected():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
