"""``python -m lthdiff.bench --help`` lists only benchmarks that run: each answers its own --help."""
import pytest

from lthdiff.bench.__main__ import available, main


def test_help_lists_only_runnable_benchmarks(capsys):
    names = available()
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out.split("benchmarks: ")[1].strip().split(", ")
    assert listed == names and "common" not in names and "records" not in names and "quality" not in names
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
    assert main(["records"]) == 2
