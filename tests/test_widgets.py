import pytest

from lthdiff.widgets import controls


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
