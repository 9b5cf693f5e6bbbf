"""Every subcommand turns a user's bad argument into one line ``lthdiff CMD: error: ...`` and exit 2."""
import pytest

from lthdiff.cli import main


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from lthdiff.models import save_model, unet

    return save_model(unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4, seed=0),
                      tmp_path_factory.mktemp("m") / "model")


CASES = {
    "run": (["run", "{tmp}/missing.toml"], "missing.toml"),
    "train": (["train", "--steps", "0", "--out", "{tmp}/t"], "steps must be a positive int"),
    "imp": (["imp", "--pretrained", "/nonexistent/model", "--run-dir", "{tmp}/r"], "no model folder at"),
    "prune": (["prune", "{tmp}/nothing", "--out", "{tmp}/p"], "holds no saved model"),
    "sample": (["sample", "{model}", "-n", "0", "--out", "{tmp}/s.png"], "n must be a positive int"),
    "eval": (["eval", "{model}", "-n", "8", "--feature-extractor", "incepton"], "accepted"),
    "report": (["report", "{tmp}/not_a_run"], "not an IMP run directory"),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_bad_argument_gives_one_line_and_exit_2(command, tmp_path, saved_model, capsys):
    argv, expect = CASES[command]
    argv = [a.format(tmp=tmp_path, model=saved_model) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"lthdiff {command}: error: ") and expect in err, err


def test_argparse_errors_use_the_same_form(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--steps", "many", "--out", "x"])
    assert exc.value.code == 2
    assert "lthdiff train: error: argument --steps" in capsys.readouterr().err
