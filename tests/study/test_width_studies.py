"""study.width_studies: the recorded studies of one protocol at several widths, with parameter counts that match
the UNets they describe (built here independently) and labels that say when a study is still running."""
import pytest

from lthdiff import models, study


@pytest.fixture(scope="module")
def widths():  # aggregating the recorded studies takes ~15 s: once for the module
    return study.width_studies()


def test_width_studies_count_the_recorded_dense_weights(widths):
    got = {w["name"]: w for w in widths}
    assert "quality_digits_converged" in got
    for name, w in got.items():
        chans = tuple(int(c) for c in w["label"].split(",")[0].split("-"))
        assert w["params"] == models.param_count(models.unet("tiny", block_out_channels=chans)), name
        assert ("networks" in w["label"]) == (not w["agg"]["complete"]), w["label"]
    assert [w["params"] for w in widths] == sorted(w["params"] for w in got.values())


def test_a_study_not_recorded_is_left_out(tmp_path):
    assert study.width_studies(["no_such_study"], records=tmp_path) == []


def test_as_bullets_keeps_the_heading_and_does_not_split_inside_a_citation():
    from lthdiff.reporting.study import as_bullets

    text = "**Head, 3 seeds.** Tickets match up to 93.8%. Late rewinding (Frankle et al. 2019) helps. Done."
    assert as_bullets(text).splitlines() == ["**Head, 3 seeds.**", "- Tickets match up to 93.8%.",
                                            "- Late rewinding (Frankle et al. 2019) helps.", "- Done."]


def test_width_summary_scopes_what_the_widths_support():
    from lthdiff.reporting.study import width_summary

    def w(params, complete, match=0.9375, miss=0.96875):
        agg = {"matching": {"sparsity": match, "first_miss": miss}, "seeds": [0, 1, 2], "complete": complete}
        return {"label": f"w{params}", "params": params, "agg": agg}

    two = width_summary([w(176_513, False, miss=None), w(699_649, True)])
    assert "still running" in two and "no miss recorded yet" in two and "too few for a trend" in two
    three = width_summary([w(176_513, True), w(699_649, True), w(2_790_000, True)])
    assert f"({2_790_000 / 176_513:.3g}x)" in three and f"{35.7e6 / 2_790_000:.3g}x beyond" in three
    assert three.count("\n- ") == 2 and "93.8%" in three


def test_partial_study_says_how_many_seeds_stand_behind_its_matching_sparsity():
    from lthdiff.reporting.study import width_summary

    agg = {"matching": {"sparsity": 0.875, "first_miss": None}, "seeds": [0, 1, 2], "complete": False,
           "table": [{"variant": "ticket", "sparsity": 0.875, "seeds": 1}]}
    text = width_summary([{"label": "16-24-24", "params": 176_513, "agg": agg}])
    assert "so far up to 87.5% (1 of 3 seeds there)" in text


def test_cli_widths_writes_the_figure_and_the_readme_block(study_cli, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- widths -->\nold\n<!-- /widths -->\nbottom\n")
    assert study_cli("widths", "--out", tmp_path / "w.png", "--readme", readme) == 0
    assert study_cli("widths", "no_such_study", "--out", tmp_path / "x.png") == 2
    assert not (tmp_path / "x.png").exists()
    text = readme.read_text()
    assert text.startswith("top\n<!-- widths -->\n- ") and text.endswith("<!-- /widths -->\nbottom\n")
    assert "old" not in text and "32-48-48 (0.7M parameters" in text
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
