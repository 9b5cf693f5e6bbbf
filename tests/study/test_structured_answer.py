"""Issue 34's answer from a study's structured rows and the serving benchmark: the sentence's numbers recomputed
by hand, the goal decided on its three conditions, the figure, and `lthdiff study structured`."""
import json
import shutil
import statistics

import pytest

from lthdiff.cli import main
from lthdiff.reporting import plots
from lthdiff.reporting.study import structured_answer
from lthdiff.study import records as R
from lthdiff.study.aggregate import aggregate_records, structured_table
from lthdiff.study.spec import RECORDED

DENSE = {0: 0.30, 1: 0.25, 2: 0.28}
FID = {"structured_ticket_50_magnitude": (0.27, 0.26, 0.30), "structured_scratch_50": (0.40, 0.35, 0.38),
       "structured_finetune_50_magnitude": (0.26, 0.30, 0.29), "structured_continued_50_magnitude": (0.28, 0.25, 0.31),
       "structured_ticket_75_magnitude": (0.9, 1.0, 1.1), "structured_scratch_75": (0.8, 0.85, 0.9),
       "structured_finetune_75_magnitude": (0.7, 0.6, 0.65)}
MACS = {"50": 0.504, "75": 0.258}


def _row(seed, variant, fid):
    pct = variant.split("_")[2] if variant.startswith("structured_") else None
    return {"seed": seed, "round": 0, "variant": variant, "fid": fid, "steps": 6000, "kid_test": 0.01,
            "loss_per_100_steps": [0.05] * 60, **({"macs_ratio": MACS[pct]} if pct else {})}


def _rows():
    return [_row(s, "ticket", f) for s, f in DENSE.items()] + \
        [_row(s, v, f[s]) for v, f in FID.items() for s in DENSE]


def _serving(p50_pruned_50: float):
    fast = lambda model, b, p50, rt: {"model": model, "batch": b, "threads": 1, "what": "DDIM-10 sample",  # noqa
                                      "p50_s": p50, "images_per_s": b / p50, "fastest": rt}
    return {"fastest": [fast("dense", 1, 0.0231, "onnx"), fast("-50% MACs", 1, p50_pruned_50, "onnx"),
                        fast("dense", 64, 0.769, "onnx"), fast("-50% MACs", 64, 0.551, "onnx"),
                        fast("-75% MACs", 1, 0.0141, "onnx"), fast("-75% MACs", 64, 0.343, "compile")]}


def test_the_answer_says_what_the_rows_and_the_benchmark_hold():
    table = structured_table(_rows())
    text = structured_answer(table, _serving(0.0181))
    # independently: the per-seed FID / dense means and the dense bound
    ratio = lambda v: statistics.mean(FID[v][s] / DENSE[s] for s in DENSE)  # noqa: E731
    bound = statistics.mean(DENSE.values()) + statistics.stdev(DENSE.values())
    assert f"ticket (magnitude): FID {ratio('structured_ticket_50_magnitude'):.3g}x dense (3 seeds), matches" in text
    assert f"scratch: FID {ratio('structured_scratch_50'):.3g}x dense (3 seeds), misses" in text
    assert statistics.mean(FID["structured_scratch_50"]) > bound
    # latency and throughput both, each model in its fastest runtime
    assert f"batch 1: 18.1 ms vs dense 23.1 ms ({0.0231 / 0.0181:.2f}x faster, {1 / 0.0181:.3g} vs {1 / 0.0231:.3g} " \
           "images/s; onnx vs onnx)" in text
    assert f"batch 64: 343 ms vs dense 769 ms ({0.769 / 0.343:.2f}x faster" in text and "compile vs onnx" in text
    # the ticket's convergence check: T -> 1.5 T from the continued rows
    delta = statistics.mean(FID["structured_continued_50_magnitude"][s] - FID["structured_ticket_50_magnitude"][s]
                            for s in DENSE)
    assert f"T -> 1.5 T FID change {delta:+.3f}" in text
    assert "best at this level: finetune (magnitude)" in text.split("74% fewer MACs")[1]
    # goal: 50 % matches but samples 0.78x dense at batch 1 -> not reached; at 0.6x it is
    assert "not reached by any recorded network" in text
    fast = structured_answer(table, _serving(0.6 * 0.0231))
    assert "reached by ticket (magnitude) at 50% fewer MACs, finetune (magnitude) at 50% fewer MACs." in fast
    assert "not reached" not in structured_answer(table, _serving(0.6 * 0.0231)).split("Goal")[1]


def test_the_figure_draws_one_marker_set_an_arm_inside_the_dense_band(tmp_path):
    table = structured_table(_rows())
    dense = list(DENSE.values())
    agg = {"structured": table, "table": [{"variant": "dense", "sparsity": 0.0, "seeds": 3,
                                           "fid_mean": statistics.mean(dense), "fid_std": statistics.stdev(dense)}]}
    fig = plots.structured_study(agg)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:] == ["ticket (magnitude), 3 seeds", "scratch, 3 seeds", "finetune (magnitude), 3 seeds"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50%", "74%"]
    # a marker is the arm's mean FID over dense's mean FID: at or below the band's top exactly when it matches
    bound = (statistics.mean(dense) + statistics.stdev(dense)) / statistics.mean(dense)
    ys = {c.get_label(): c.lines[0].get_ydata() for c in ax.containers}
    assert len(ys) == 3 and all(len(v) == 2 for v in ys.values())
    for r in table:
        y = statistics.mean(FID[next(v for v in FID if v.startswith(f"structured_{r['kind']}_{round(100 * r['reduction'])}")
                                 )]) / statistics.mean(dense)
        assert any(abs(y - v) < 1e-9 for vs in ys.values() for v in vs)
        assert (y <= bound + 1e-12) == r["matches_dense"]
    band = ax.patches[0].get_window_extent()  # the dense band, in display units -> data units below
    lo, hi = sorted(ax.transData.inverted().transform([[0, band.y0], [0, band.y1]])[:, 1])
    cv = statistics.stdev(dense) / statistics.mean(dense)
    assert (lo, hi) == pytest.approx((1 - cv, 1 + cv), abs=1e-6)
    plots.close(fig)
    with pytest.raises(ValueError, match="'structured' table is empty"):
        plots.structured_study({"structured": [], "table": agg["table"]})


def test_cli_writes_the_figure_and_the_readme_block_and_refuses_a_study_without_structured_networks(tmp_path, capsys):
    rec = tmp_path / "rec"
    for s in DENSE:
        shutil.copytree(RECORDED / "quality_digits_converged" / f"seed_{s}", rec / f"seed_{s}",
                        ignore=shutil.ignore_patterns("*.safetensors", "mask_*", "r00_structured_*"))
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- structured -->\nold\n<!-- /structured -->\nbottom\n")
    assert main(["study", "structured", str(rec), "--out", str(tmp_path / "f.png"), "--readme", str(readme)]) == 2
    assert "holds no recorded structured network" in capsys.readouterr().err and "old" in readme.read_text()
    for s in DENSE:
        dense = json.loads((rec / f"seed_{s}" / "r00_ticket.json").read_text())["fid"]
        for v, f in FID.items():
            R.write_network(rec / f"seed_{s}", {**_row(s, v, f[s] * dense / DENSE[s])})
    assert main(["study", "structured", str(rec), "--out", str(tmp_path / "f.png"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("top\n<!-- structured -->\n- **50% fewer MACs**") and text.endswith("<!-- /structured -->\nbottom\n")
    agg = aggregate_records(rec)
    t = next(r for r in agg["structured"] if r["kind"] == "ticket" and r["reduction"] == 0.5)
    assert f"FID {t['ratio_to_dense_mean']:.3g}x dense" in text
    assert (tmp_path / "f.png").stat().st_size > 10_000
    # status reads the structured plan from the records: seed 0 lacks what these rows leave out
    from lthdiff.study import status

    left = {"structured_half_50_magnitude", "structured_half_75_magnitude", "structured_continued_75_magnitude"}
    (rec / "seed_0" / "r00_structured_ticket_75_magnitude.json").unlink()
    left.add("structured_ticket_75_magnitude")
    by_seed = {x["seed"]: x for x in status(rec)}
    assert by_seed[0]["left"] == len(left) and by_seed[1]["left"] == len(left) - 1
    assert {v for _, v in by_seed[0]["next"]} <= left
