"""``lthdiff study ...`` called in-process (tiny configs: tiny_study.write_config)."""
from __future__ import annotations

import pytest

from lthdiff.cli import main


@pytest.fixture
def study_cli():
    """``study_cli("run", cfg, "--records", ...)`` -> exit code of ``lthdiff study ...``."""
    return lambda *argv: main(["study", *map(str, argv)])
