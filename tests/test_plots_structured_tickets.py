"""lthdiff.reporting.plots.structured_tickets: bars and error bars come from the recorded table."""
import json

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from lthdiff.reporting import close, structured_tickets

TABLE = [{"sparsity": 0.0, "variant": "dense", "fid_mean": 10.0, "fid_std": 1.0, "kid_mean": 0.1, "kid_std": 0.01},
         *({"sparsity": lv, "variant": arm, "fid_mean": 10 + 10 * lv + i, "fid_std": 0.5 + i, "kid_mean": 0.2,
            "kid_std": 0.02} for lv in (0.5, 0.75) for i, arm in enumerate(("ticket", "scratch", "finetune")))]


def test_bar_heights_and_error_bars_are_the_table(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"table": TABLE}))
    fig = structured_tickets(path)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_width() < 1)
    assert heights == sorted(round(r["fid_mean"], 6) for r in TABLE if r["variant"] != "dense")
    stds = sorted(round(float(seg[1][1] - seg[0][1]) / 2, 6) for c in ax.containers if hasattr(c, "errorbar")
                  for seg in c.errorbar.lines[2][0].get_segments())
    assert stds == sorted(round(r["fid_std"], 6) for r in TABLE if r["variant"] != "dense")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense ± 1 std", "ticket", "scratch", "finetune"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50% fewer MACs", "75% fewer MACs"]
    assert ax.get_yscale() == "linear"  # bars within 3x of each other
    close(fig)


def test_a_wide_range_gets_a_log_axis_and_the_legend_stays_off_the_bars():
    wide = [dict(r, fid_mean=r["fid_mean"] * (3 if r["sparsity"] == 0.75 else 1)) for r in TABLE]
    fig = structured_tickets({"table": wide})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, not over the bars
    close(fig)


def test_bad_input_says_what_is_accepted():
    with pytest.raises(ValueError, match="'table' list"):
        structured_tickets({"rows": []})
    with pytest.raises(ValueError, match="metric must be"):
        structured_tickets({"table": TABLE}, metric="lpips")


def test_ticks_say_the_reduction_reached_and_the_title_the_seeds():
    rows = [dict(r, seeds=3) for r in TABLE]
    latency = [{"MAC target": "50%", "macs_reduction": 0.496}, {"MAC target": "75%", "macs_reduction": 0.742}]
    fig = structured_tickets({"table": rows, "latency": latency})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50% fewer MACs", "74% fewer MACs"]
    assert "3 seeds" in ax.get_title()
    close(fig)
