"""Notebook controls: one parameter cell of ipywidgets whose values the later cells read.

``params = controls(steps=(2000, 30), dataset=["digits", "mnist"])`` displays a form; later cells
read ``params.steps``.  A pair ``(full, quick)`` picks ``quick`` when ``LTHDIFF_QUICK=1`` (CI under
nbval), so a notebook states both its real and its quick sizes in one place.  A dict
``{"gpu": ..., "cpu": ..., "quick": ...}`` also sizes the full run for the machine: the ``gpu``
value where CUDA is available (Colab, Kaggle), ``cpu`` elsewhere.
"""
from __future__ import annotations

import os
from typing import Any


from lthdiff.runtime import is_quick


def in_colab_or_kaggle() -> bool:
    """True on Google Colab or Kaggle (where the first notebook cell installs lthdiff)."""
    import sys

    return "google.colab" in sys.modules or bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


class Controls:
    """A set of named widgets; attribute access returns each widget's current value."""

    def __init__(self, widgets: dict[str, Any]) -> None:
        object.__setattr__(self, "_widgets", widgets)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._widgets[name].value
        except KeyError:
            raise AttributeError(f"no control {name!r}; controls: {sorted(self._widgets)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._widgets[name].value = value

    def values(self) -> dict[str, Any]:
        """All current values as a plain dict (to log or pass as ``**kwargs``)."""
        return {k: w.value for k, w in self._widgets.items()}

    def __repr__(self) -> str:
        return f"Controls({self.values()})"

    def summary(self) -> str:
        """The current values as one line of text (floats to 3 significant digits)."""
        fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
        return "parameters: " + ", ".join(f"{k}={fmt(v)}" for k, v in self.values().items())

    def _ipython_display_(self) -> None:
        from IPython.display import display
        import ipywidgets as W

        display(W.VBox(list(self._widgets.values())))
        # Static renderings (GitHub, nbconvert) show no widgets: the values this run used, as text.
        print(self.summary())


def on_drive(path: str, save_to_drive: bool) -> str:
    """Where a notebook keeps ``path`` (a run folder, study records): under Google Drive's
    ``MyDrive/lthdiff/`` (mounting Drive) when ``save_to_drive`` and this runs on Colab, so a runtime reset
    resumes from there; ``path`` itself elsewhere (Kaggle and local disks persist on their own terms)."""
    import sys

    if not save_to_drive:
        return path
    if "google.colab" not in sys.modules:
        print(f"save_to_drive: not on Colab, {path} stays on this machine's disk")
        return path
    from google.colab import drive

    drive.mount("/content/drive")
    return f"/content/drive/MyDrive/lthdiff/{path.lstrip('/')}"


def device() -> str:
    """``"cuda"`` when a CUDA GPU is available, else ``"cpu"``: where the notebooks train and sample."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_SIZES = ("gpu", "cpu", "quick")


def sized(spec: Any) -> Any:
    """The value of a ``(full, quick)`` pair or a ``{"gpu", "cpu", "quick"}`` dict for this machine and mode;
    any other spec unchanged."""
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (list, tuple)):
        return spec[1] if is_quick() else spec[0]
    if isinstance(spec, dict):
        if set(spec) != set(_SIZES):
            raise ValueError(f"unsupported dict spec: a sized control needs exactly the keys {list(_SIZES)}, "
                             f"got {sorted(spec)}")
        return spec["quick"] if is_quick() else spec["gpu" if device() == "cuda" else "cpu"]
    return spec


def _widget(name: str, spec: Any):
    import ipywidgets as W

    style = {"description_width": "160px"}
    spec = sized(spec)
    if isinstance(spec, list):
        return W.Dropdown(options=spec, value=spec[0], description=name, style=style)
    if isinstance(spec, bool):
        return W.Checkbox(value=spec, description=name, style=style)
    if isinstance(spec, int):
        return W.IntText(value=spec, description=name, style=style)
    if isinstance(spec, float):
        return W.FloatText(value=spec, description=name, style=style)
    if isinstance(spec, str):
        return W.Text(value=spec, description=name, style=style)
    raise ValueError(f"control {name!r}: unsupported spec {spec!r}; use int, float, str, bool, a list of "
                     "choices, a (full, quick) pair or a {'gpu', 'cpu', 'quick'} dict")


def controls(**spec: Any) -> Controls:
    """Build :class:`Controls` from ``name=default`` pairs (see the module docstring)."""
    return Controls({name: _widget(name, s) for name, s in spec.items()})


def _where() -> str:
    import torch

    return "GPU: " + torch.cuda.get_device_name(0) if device() == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def mode() -> str:
    """One line for the parameters cell: which mode and which device this run uses."""
    return f"{'quick' if is_quick() else 'full'} mode on {_where()}"


def elapsed(t0: float) -> str:
    """How long a notebook cell's work took since ``t0`` (``time.perf_counter()``), in minutes, and on what device,
    so a committed output states its own run time."""
    import time

    return f"{(time.perf_counter() - t0) / 60:.1f} min on {_where()}"
