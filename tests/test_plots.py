import pandas as pd
import pytest

from lthdiff.reporting import plots


def _table():
    return pd.DataFrame({"sparsity": [0.0, 0.5, 0.75, 0.5, 0.75], "fid": [1.0, 1.1, 1.5, 2.0, 3.0],
                         "std": [0.1] * 5, "kid": [0.01] * 5,
                         "variant": ["ticket", "ticket", "ticket", "random_reinit", "random_reinit"]})


def test_interactive_curve_has_one_trace_per_variant_ticket_first():
    fig = plots.sparsity_curve_interactive(_table(), "fid", error="std", hover=["kid"])
    assert [t.name for t in fig.data] == ["ticket", "random_reinit"]
    assert list(fig.data[0].x) == [100.0, 50.0, 25.0]  # percent remaining, sorted by sparsity
    assert list(fig.data[1].y) == [2.0, 3.0]
    assert list(fig.data[0].error_y.array) == [0.1, 0.1, 0.1]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.autorange == "reversed"


def test_interactive_curve_names_a_missing_column():
    with pytest.raises(ValueError, match="no column 'lpips'"):
        plots.sparsity_curve_interactive(_table(), "lpips")


def test_loss_panels_are_small_multiples_with_one_legend():
    from lthdiff.reporting import plots

    panels = {f"{s}% sparsity": {"ticket": [1.0, 0.5, 0.4], "random_reinit": [1.2, 0.9, 0.7]} for s in (50, 75, 88, 94)}
    fig = plots.loss_panels(panels, reference=("dense", [1.1, 0.6, 0.5]), ncols=3)
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 4 and len(fig.axes) == 6  # 2 rows of 3; the empty slots hidden
    for ax in shown:
        assert [line.get_label() for line in ax.get_lines()] == ["dense", "ticket", "random_reinit"]
        assert len(ax.get_lines()) <= 3  # never ten curves on one axis
    colours = {ax.get_lines()[1].get_color() for ax in shown}
    assert len(colours) == 1  # the ticket keeps its colour in every panel
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["dense", "ticket", "random_reinit"]
    plots.close(fig)
    with pytest.raises(ValueError, match="at least one panel"):
        plots.loss_panels({})


def test_show_grid_wraps_after_ncols_panels():
    import torch

    from lthdiff.evaluation import sampling

    grids = [torch.zeros(4, 1, 8, 8, dtype=torch.uint8)] * 6
    fig = sampling.show_grid(grids, titles=[str(i) for i in range(6)])
    width, height = fig.get_size_inches()
    assert len(fig.axes) == 8 and width == pytest.approx(4 * 3.2) and height == pytest.approx(2 * 3.4)
    assert [ax.get_title() for ax in fig.axes if ax.images] == [str(i) for i in range(6)]
    with pytest.raises(ValueError, match="6 grids but 2 titles"):
        sampling.show_grid(grids, titles=["a", "b"])


def test_sparsity_curve_draws_dense_as_a_reference_not_on_the_ticket_line():
    table = pd.DataFrame({"round": [0, 1, 1, 2, 2], "variant": ["ticket", "ticket", "random_reinit", "ticket", "random_reinit"],
                          "sparsity": [0.0, 0.5, 0.5, 0.75, 0.75], "final_loss": [0.04, 0.039, 0.045, 0.036, 0.043]})
    fig = plots.sparsity_curve(table, "final_loss")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["ticket"].get_ydata()) == [0.039, 0.036]  # no dense point at the start of the ticket line
    assert set(lines["dense"].get_ydata()) == {0.04}
    assert ax.get_ylabel() == "final training loss" and "final_loss" not in ax.get_title()
    plots.close(fig)
