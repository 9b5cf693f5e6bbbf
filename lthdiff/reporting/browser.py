"""Render an HTML page to PNG with headless Chromium: checks that a report renders, and previews it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lthdiff.store.io import atomic_path

__all__ = ["screenshot"]

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def screenshot(html_path: str | os.PathLike, png: str | os.PathLike, *, width: int = 1200, height: int = 2400,
               timeout: float = 180.0) -> Path | None:
    """Render ``html_path`` in headless Chromium to ``png`` (``width`` x ``height`` pixels).

    Returns the PNG path, or None (with a message on stderr) when no Chromium/Chrome is installed
    (``apt-get install chromium``).  Used to check that a report renders, and for previews.
    """
    exe = next((p for p in map(shutil.which, _BROWSERS) if p), None)
    if exe is None:
        print(f"lthdiff.reporting.report.screenshot: no browser found (looked for {', '.join(_BROWSERS)}); "
              "install one, e.g. `apt-get install chromium`", file=sys.stderr)
        return None
    html_path = Path(html_path).resolve()
    if not html_path.exists():
        raise FileNotFoundError(f"no such file: {html_path}")
    png = Path(png)
    with tempfile.TemporaryDirectory(prefix="lthdiff-chromium-") as work:
        # Chromium picks the image format from the extension, so render beside the profile, then
        # move it into place atomically
        shot = Path(work) / "screenshot.png"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={Path(work) / 'profile'}", f"--screenshot={shot}",
               f"--window-size={width},{height}", html_path.as_uri()]
        try:
            err = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stderr
        except subprocess.TimeoutExpired as exc:
            # headless Chromium sometimes lingers after writing the screenshot; the file decides
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        if not shot.exists() or shot.stat().st_size == 0:
            lines = [ln for ln in err.splitlines() if "dbus" not in ln]  # dbus noise is harmless
            raise RuntimeError(f"{exe} wrote no screenshot of {html_path}; its output:\n" + "\n".join(lines[-20:]))
        with atomic_path(png) as tmp:
            shutil.copyfile(shot, tmp)
    return png


