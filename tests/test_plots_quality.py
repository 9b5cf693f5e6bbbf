"""plots.quality_vs_sparsity and plots.classic_accuracy on hand-made results."""
import matplotlib

matplotlib.use("Agg")
import pytest

from lthdiff.reporting import plots
from lthdiff.evaluation import aggregate

ROWS = [{"seed": s, "round": r, "sparsity": sp, "variant": v, "fid": f}
        for s in (0, 1)
        for r, sp, v, f in [(0, 0.0, "ticket", 10.0 + s), (1, 0.5, "ticket", 10.5 + s), (1, 0.5, "random_reinit", 14.0 + s),
                            (2, 0.75, "ticket", 11.0 + s), (2, 0.75, "random_reinit", 16.0 + s)]]


def test_quality_vs_sparsity_draws_band_lines_and_matching():
    fig = plots.quality_vs_sparsity(aggregate(ROWS), matching=0.5)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    names = plots.VARIANT_LABELS
    assert labels[:1] == ["dense ± 1 std"] and names["ticket"] in labels and names["random_reinit"] in labels
    assert "matching sparsity 50.0%" in labels
    band = ax.patches[0]
    ys = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]
    lo, hi = ys.min(), ys.max()
    assert (lo, hi) == pytest.approx((10.5 - 0.5 ** 0.5, 10.5 + 0.5 ** 0.5))  # mean 10.5, sample std sqrt(.5)
    # x: weights remaining on a log axis, sparser to the right
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]
    ticket = next(c for c in ax.containers if c.get_label() == names["ticket"]).lines[0]
    assert list(ticket.get_xdata()) == pytest.approx([100, 50, 25])
    assert list(ticket.get_ydata()) == pytest.approx([10.5, 11.0, 11.5])
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1 - 1  # the legend sits off the data
    plots.close(fig)


def test_quality_vs_sparsity_names_missing_column():
    with pytest.raises(ValueError, match="kid_mean"):
        plots.quality_vs_sparsity(aggregate(ROWS), metric="kid")


def test_classic_accuracy_from_a_payload(tmp_path):
    import json

    rows = [{"seed": 0, "round": r, "variant": v, "sparsity": 1 - rem, "remaining": rem, "accuracy": a}
            for r, v, rem, a in [(0, "ticket", 1.0, 0.95), (1, "ticket", 0.8, 0.96), (1, "random_reinit", 0.8, 0.94)]]
    path = tmp_path / "classic.json"
    path.write_text(json.dumps({"config": {"preset": "lenet-300-100", "dataset": "mnist5k", "seeds": 1}, "rows": rows}))
    fig = plots.classic_accuracy(path)
    assert "mnist5k" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_legend_handles_labels()[1]) == 3  # ticket, random reinit, dense
    plots.close(fig)


@pytest.mark.parametrize("rounds", [4, 12, 13])
def test_accuracy_ticks_sit_at_the_measured_levels_and_the_legend_off_the_bars(rounds):
    import pandas as pd

    rem = [0.8 ** r for r in range(rounds + 1)]  # LeNet-5's levels sat between the old 100/50/20 ticks
    df = pd.DataFrame([{"seed": 0, "round": r, "variant": v, "remaining": rem[r], "accuracy": 0.9}
                       for r in range(rounds + 1) for v in (["ticket"] if r == 0 else ["ticket", "random_reinit"])])
    ax = plots.plot_accuracy(df)
    ticks = sorted(ax.get_xticks(), reverse=True)
    want = [100 * x for x in rem] if rounds + 1 <= 9 else [100 * x for x in rem[::2][:-1]] + [100 * rem[-1]]
    assert ticks == pytest.approx(want)
    anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 > 1.0, "the legend sits on the data"
    plots.close(ax.figure)


def test_matching_vs_width_places_each_width_at_its_parameters_and_marks_jiang():
    def agg(match, miss, ratios):
        return {"matching": {"sparsity": match, "first_miss": miss}, "seeds": [0, 1, 2],
                "table": [{"variant": "ticket", "sparsity": s, "ratio_to_dense_mean": r, "ratio_to_dense_std": 0.1}
                          for s, r in ratios]}
    studies = [{"params": 2.79e6, "label": "2x", "agg": agg(0.96875, None, [(0.5, 0.8), (0.96875, 0.95)])},
               {"params": 0.18e6, "label": "0.5x", "agg": agg(0.875, 0.9375, [(0.5, 0.9), (0.9375, 1.6)])}]
    fig = plots.matching_vs_width(studies)
    left, right = fig.axes[:2]
    pts = {c.get_label(): (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in left.containers}
    assert pts["0.5x (0.18M)"] == pytest.approx((0.18e6, 87.5)) and pts["2x (2.8M)"] == pytest.approx((2.79e6, 96.875))
    star = left.collections[-1].get_offsets()[0]
    assert tuple(star) == pytest.approx((plots.JIANG_PARAMS, 99.0)) and left.get_xscale() == "log"
    curve = next(c for c in right.containers if c.get_label().startswith("0.5x")).lines[0]
    assert list(curve.get_xdata()) == pytest.approx([50.0, 6.25]) and list(curve.get_ydata()) == pytest.approx([0.9, 1.6])
    plots.close(fig)
    with pytest.raises(ValueError, match="at least one study"):
        plots.matching_vs_width([])
