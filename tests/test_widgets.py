import pytest

from lthdiff.reporting.widgets import controls


def test_controls_values_and_quick(monkeypatch):
    monkeypatch.setenv("LTHDIFF_QUICK", "1")
    c = controls(steps=(2000, 20), dataset=["digits", "mnist"], lr=1e-3, ema=True, name="x")
    assert c.steps == 20 and c.dataset == "digits" and c.lr == 1e-3 and c.ema is True
    c.steps = 5
    assert c.values()["steps"] == 5
    monkeypatch.setenv("LTHDIFF_QUICK", "0")
    assert controls(steps=(2000, 20)).steps == 2000
    with pytest.raises(AttributeError, match="steps"):
        c.nope
    with pytest.raises(ValueError, match="unsupported"):
        controls(bad={"a": 1})


def test_sized_controls_follow_mode_and_machine(monkeypatch):
    import lthdiff.reporting.widgets as W

    spec = {"gpu": 4000, "cpu": 2000, "quick": 30}
    monkeypatch.setenv("LTHDIFF_QUICK", "1")
    assert controls(steps=spec).steps == 30
    monkeypatch.setenv("LTHDIFF_QUICK", "0")
    monkeypatch.setattr(W, "device", lambda: "cpu")
    assert controls(steps=spec).steps == 2000 and "full mode on CPU" in W.mode()
    monkeypatch.setattr(W, "device", lambda: "cuda")
    assert controls(steps=spec).steps == 4000
    with pytest.raises(ValueError, match=r"exactly the keys \['gpu', 'cpu', 'quick'\]"):
        controls(steps={"gpu": 1, "cpu": 2})


def test_with_static_carries_a_png_and_no_plotly_js():
    import base64

    import matplotlib.pyplot as plt
    import pandas as pd

    from lthdiff.reporting import plots

    table = pd.DataFrame({"sparsity": [0.0, 0.5, 0.5], "variant": ["ticket", "ticket", "random_reinit"],
                          "fid": [3.0, 2.0, 4.0]})
    before = len(plt.get_fignums())
    both = plots.with_static(plots.sparsity_curve_interactive(table, "fid", title="t"),
                             plots.sparsity_curve(table, "fid"))
    assert len(plt.get_fignums()) == before  # the twin is closed: shown once, through the bundle
    bundle = both._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    fig = bundle["application/vnd.plotly.v1+json"]
    assert [t["name"] for t in fig["data"]] == ["ticket", "random_reinit"]
    assert "text/html" not in bundle  # outside Colab: no HTML that would need plotly.js to show anything


def test_progress_is_silent_in_a_log_and_says_one_line(monkeypatch, capsys):
    from lthdiff import runtime

    monkeypatch.delenv("LTHDIFF_PROGRESS", raising=False)
    assert runtime.interactive() is False  # pytest captures stderr: not a terminal, not a kernel
    bar = runtime.progress_bar(total=3, desc="x")
    assert bar.disable
    runtime.log_line("round 1 ticket: 40 steps")
    assert capsys.readouterr().out == "[lthdiff] round 1 ticket: 40 steps\n"
    monkeypatch.setenv("LTHDIFF_PROGRESS", "1")
    assert runtime.interactive() and not runtime.progress_bar(total=3, desc="x").disable
    runtime.log_line("not printed when bars show")
    assert capsys.readouterr().out == ""


def test_the_parameters_cell_also_prints_its_values_as_text(monkeypatch, capsys):
    """A static rendering (GitHub, nbconvert) shows no widgets, so the cell prints the values too."""
    import IPython.display

    from lthdiff.reporting import widgets

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.extend(a))
    params = widgets.controls(steps=(300, 20), lr=0.0012345, name=["a", "b"])
    params._ipython_display_()
    out = capsys.readouterr().out
    assert len(shown) == 1 and type(shown[0]).__name__ == "VBox"
    assert out.strip() == f"parameters: steps={params.steps}, lr=0.00123, name=a"


def test_elapsed_states_minutes_and_the_device():
    import time

    from lthdiff.reporting import widgets

    text = widgets.elapsed(time.perf_counter() - 90)
    assert text.startswith("1.5 min on ") and text.split(" on ", 1)[1] == widgets.mode().split(" on ", 1)[1]
