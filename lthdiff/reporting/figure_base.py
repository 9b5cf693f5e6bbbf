"""Figure plumbing shared by :mod:`lthdiff.reporting.plots` and :mod:`lthdiff.reporting.plots_results`: an Axes to draw on,
PNG bytes, data URIs for self-contained HTML, and releasing pyplot figures."""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

__all__ = ["axes", "to_png", "data_uri", "close", "readable_log_axis"]


def axes(ax: Any, figsize: tuple[float, float]):
    """``(figure, ax)``: the given Axes and its figure, or a new constrained-layout figure of ``figsize`` inches."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def to_png(fig: Any, *, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    # no bbox_inches="tight": our figures use constrained layout, and tight bbox doubles render time
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_uri(png: bytes | str | os.PathLike | Any) -> str:
    """A ``data:image/png;base64,...`` URI from PNG bytes, a PNG file, or a matplotlib figure."""
    if isinstance(png, (str, os.PathLike)):
        png = Path(png).read_bytes()
    elif not isinstance(png, (bytes, bytearray)):
        png = to_png(png)
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def close(fig: Any) -> None:
    """Release a pyplot figure (reports draw many; pyplot keeps them alive otherwise)."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def readable_log_axis(axis: Any, lo: float, hi: float) -> None:
    """Plain numbers (0.2, 0.5, 1 rather than 2x10^-1) on a log axis, 1-2-5 ticks per decade."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if hi / lo > 3 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(NullFormatter())
