"""study.width_studies: the recorded studies of one protocol at several widths, with parameter counts that match
the UNets they describe (built here independently) and labels that say when a study is still running."""
from lthdiff import models, study


def test_width_studies_count_the_recorded_dense_weights():
    got = {w["name"]: w for w in study.width_studies()}
    assert "quality_digits_converged" in got
    for name, w in got.items():
        widths = tuple(int(c) for c in w["label"].split(",")[0].split("-"))
        assert w["params"] == models.param_count(models.unet("tiny", block_out_channels=widths)), name
        assert ("networks" in w["label"]) == (not w["agg"]["complete"]), w["label"]
    assert [w["params"] for w in study.width_studies()] == sorted(w["params"] for w in got.values())


def test_a_study_not_recorded_is_left_out(tmp_path):
    assert study.width_studies(["no_such_study"], records=tmp_path) == []
