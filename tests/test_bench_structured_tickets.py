"""Aggregation of the structured-tickets benchmark on hand-made rows (no training)."""
import statistics

from lthdiff.bench.structured_tickets import summarize


def _rows():
    fids = {"dense": [10, 11, 12], "ticket": [14, 13, 20], "scratch": [15, 12, 21], "finetune": [13, 14, 19]}
    rows = []
    for seed in range(3):
        rows.append({"seed": seed, "sparsity": 0.0, "round": 0, "variant": "dense", "fid": fids["dense"][seed],
                     "kid": fids["dense"][seed] / 100})
        for arm in ("ticket", "scratch", "finetune"):
            rows.append({"seed": seed, "sparsity": 0.5, "round": 1, "variant": arm, "fid": fids[arm][seed],
                         "kid": fids[arm][seed] / 100})
    return rows, fids


def test_means_stds_and_wins_per_seed():
    rows, fids = _rows()
    s = summarize(rows)
    by = {(r["sparsity"], r["variant"]): r for r in s["table"]}
    for arm, v in fids.items():
        r = by[(0.0 if arm == "dense" else 0.5, arm)]
        assert r["fid_mean"] == statistics.mean(v) and r["fid_std"] == statistics.stdev(v)
        assert abs(r["kid_mean"] - statistics.mean(v) / 100) < 1e-12
    assert s["versus"]["scratch"][0]["ticket_wins"] == 2  # 14<15, 13 vs 12 lost, 20<21
    assert s["versus"]["finetune"][0]["ticket_wins"] == 1  # 14 vs 13 lost, 13<14, 20 vs 19 lost
    assert s["versus"]["finetune"][0]["seeds"] == 3
