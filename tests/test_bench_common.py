"""Where notebooks find benchmark results: a fresh local run wins over the recorded one."""
from lthdiff.bench.common import RECORDED, find_results, write_results


def test_find_results_prefers_a_fresh_run_then_the_recorded_one(tmp_path):
    assert find_results("quality", tmp_path) == RECORDED / "quality.json"  # committed CPU run in data/bench/
    fresh, _ = write_results(tmp_path, "quality", {"table": []}, "(no rows)\n")
    assert find_results("quality", tmp_path) == fresh
    assert find_results("no_such_benchmark", tmp_path) is None
