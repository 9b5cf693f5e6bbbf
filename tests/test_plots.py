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
