"""Experiment registry: round trip, all-or-nothing rounds, concurrent writers, schema migration."""
from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3

import pytest

from lthdiff.tracking import OVERALL, SCHEMA_VERSION, Registry, migrate

LAYERS = ["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "conv_out.weight"]


@pytest.fixture
def reg(tmp_path):
    with Registry(tmp_path / "sub" / "lthdiff.db") as r:
        yield r


def _experiment(reg: Registry, run_dir) -> int:
    m = reg.get_or_create_model("UNet2DModel", {"preset": "tiny", "block_out_channels": [32, 48, 48]})
    d = reg.get_or_create_dataset("digits", "sklearn 8x8 digits", image_size=16)
    return reg.start_experiment(m, d, "imp", config={"rounds": 2, "rewind": "init"}, seed=0, run_dir=run_dir)


def _count(reg: Registry, table: str, where: str = "1", params=()) -> int:
    return int(reg.sql(f"SELECT count(*) AS n FROM {table} WHERE {where}", params)["n"][0])


def test_round_trip_and_queries(reg, tmp_path):
    exp = _experiment(reg, tmp_path / "run")
    # get_or_create returns the same rows; a different config is a different model
    assert reg.get_or_create_model("UNet2DModel", {"block_out_channels": [32, 48, 48], "preset": "tiny"}) == 1
    assert reg.get_or_create_model("UNet2DModel", {"preset": "small"}) == 2
    assert reg.get_or_create_dataset("digits", image_size=16) == 1
    assert reg.get_or_create_dataset("digits", image_size=32) == 2

    for r, s in enumerate([0.0, 0.2, 0.36]):
        reg.log_round(exp, r, {n: s for n in LAYERS}, {"final_loss": 0.5 - 0.1 * r, "sparsity": s})
    reg.log_metrics(exp, 2, {"final_loss": 0.9}, variant="random_reinit")
    reg.log_metrics(exp, 2, {"fid": 31.5, "kid": 0.01}, extractor="inception-v3", settings={"n": 1000})
    reg.set_status(exp, "completed")

    ex = reg.experiments()
    assert ex.loc[0, "status"] == "completed" and ex.loc[0, "rounds"] == 3 and ex.loc[0, "config"]["rewind"] == "init"
    assert ex.loc[0, "model"] == "UNet2DModel" and ex.loc[0, "dataset"] == "digits"

    wide = reg.metrics()
    assert list(wide.columns) == ["experiment_id", "round", "variant", "sparsity", "final_loss", "fid", "kid"]
    assert list(zip(wide["round"], wide["variant"])) == [(0, "ticket"), (1, "ticket"), (2, "ticket"),
                                                          (2, "random_reinit")]
    last = wide.iloc[2]
    assert last["sparsity"] == 0.36 and last["fid"] == 31.5 and last["final_loss"] == pytest.approx(0.3)
    assert wide.iloc[3]["final_loss"] == 0.9 and wide.iloc[3]["sparsity"] == 0.36 and math.isnan(wide.iloc[3]["fid"])
    assert list(reg.metrics(metric="fid").columns) == ["experiment_id", "round", "variant", "sparsity", "fid"]
    assert reg.metrics(experiment_ids=[exp + 1]).empty
    long = reg.metrics(metric="fid", wide=False)
    assert long.loc[0, "extractor"] == "inception-v3" and long.loc[0, "settings"] == {"n": 1000}

    pr = reg.pruning(exp)
    assert len(pr) == 3 * len(LAYERS) and OVERALL not in set(pr["layer"])
    assert pr[pr["round"] == 1]["overall"].tolist() == [0.2] * len(LAYERS)


def test_relogging_replaces_rows_and_find_experiment_reuses(reg, tmp_path, monkeypatch):
    exp = _experiment(reg, tmp_path / "run")
    reg.log_round(exp, 1, {n: 0.2 for n in LAYERS}, {"final_loss": 0.4}, sparsity=0.2)
    reg.log_round(exp, 1, {LAYERS[0]: 0.3}, {"final_loss": 0.35}, sparsity=0.3)  # e.g. a resumed round
    assert _count(reg, "pruning_log") == 2 and _count(reg, "evaluation_metric") == 1
    assert reg.metrics().loc[0, "final_loss"] == 0.35
    # the same run_dir, spelled relative to the working directory, finds the same experiment
    monkeypatch.chdir(tmp_path)
    assert reg.find_experiment("run") == exp and reg.find_experiment("other") is None


def test_bad_value_mid_round_stores_nothing(reg, tmp_path):
    exp = _experiment(reg, tmp_path / "run")
    reg.log_round(exp, 0, {n: 0.0 for n in LAYERS}, {"final_loss": 0.5, "sparsity": 0.0})
    before = reg.sql("SELECT * FROM pruning_log ORDER BY rowid"), reg.sql("SELECT * FROM evaluation_metric")

    # NaN in the middle of the layers: the layers before it were already inserted in the transaction
    with pytest.raises(ValueError, match=r"down_blocks.*round 1.*nan"):
        reg.log_round(exp, 1, {LAYERS[0]: 0.2, LAYERS[1]: float("nan"), LAYERS[2]: 0.2}, {"final_loss": 0.4})
    # all layers fine, then a non-numeric metric after a good one
    with pytest.raises(ValueError, match=r"metric 'fid'.*'n/a'"):
        reg.log_round(exp, 1, {n: 0.2 for n in LAYERS}, {"final_loss": 0.4, "fid": "n/a"})
    # re-logging round 0 starts by deleting its rows; a failure must bring them back
    with pytest.raises(ValueError, match=r"sparsity in \[0, 1\].*1.5"):
        reg.log_round(exp, 0, {LAYERS[0]: 0.0, LAYERS[1]: 1.5}, {"final_loss": 0.1})
    with pytest.raises(ValueError, match="finite"):
        reg.log_metrics(exp, 0, {"fid": 10.0, "kid": float("inf")}, extractor="inception-v3")

    after = reg.sql("SELECT * FROM pruning_log ORDER BY rowid"), reg.sql("SELECT * FROM evaluation_metric")
    assert before[0].equals(after[0]) and before[1].equals(after[1])
    assert _count(reg, "pruning_log", "round = 1") == 0 and _count(reg, "evaluation_metric", "name = 'fid'") == 0


def test_schema_checks_and_foreign_keys_hold_without_python_validation(reg, tmp_path):
    exp = _experiment(reg, tmp_path / "run")
    insert = "INSERT INTO pruning_log (experiment_id, round, layer, sparsity, logged) VALUES (?, ?, ?, ?, 'now')"
    for bad in [(exp, 0, "a.weight", 1.5), (exp, 0, "a.weight", "abc"), (exp, 0, "a.weight", float("nan")),
                (exp, -1, "a.weight", 0.5), (exp + 99, 0, "a.weight", 0.5)]:
        with pytest.raises(sqlite3.IntegrityError):
            with reg.transaction() as db:
                db.execute(insert, (exp, 0, "ok.weight", 0.5))  # a good row first: it must be rolled back too
                db.execute(insert, bad)
    assert _count(reg, "pruning_log") == 0
    with pytest.raises(ValueError, match="no experiment with id 999"):
        reg.log_round(999, 0, {"a.weight": 0.1})
    with pytest.raises(ValueError, match=r"unknown status 'done'.*completed"):
        reg.set_status(exp, "done")


def _writer(path: str, worker: int, rounds: int, barrier) -> None:
    barrier.wait(timeout=120)  # both processes create/migrate the fresh file and write at the same time
    with Registry(path) as reg:
        exp = _experiment(reg, f"/nonexistent/run_{worker}")
        for r in range(rounds):
            if r == rounds // 2:
                # meet half way, so the two writers' spans overlap however the OS schedules them
                barrier.wait(timeout=120)
            reg.log_round(exp, r, {n: 1 - 0.8 ** r for n in LAYERS},
                          {"final_loss": 1.0 / (r + 1), "sparsity": 1 - 0.8 ** r})


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    path, rounds = str(tmp_path / "shared.db"), 200
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, i, rounds, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():  # only if the test is failing anyway: do not leave it running
            p.terminate()
    assert [p.exitcode for p in procs] == [0, 0]
    with Registry(path) as reg:
        assert reg.journal_mode == "wal"
        assert _count(reg, "model") == 1 and _count(reg, "dataset") == 1  # get_or_create did not race
        ex = reg.experiments()
        assert len(ex) == 2 and ex["rounds"].tolist() == [rounds, rounds]
        assert _count(reg, "pruning_log") == 2 * rounds * (len(LAYERS) + 1)
        assert _count(reg, "evaluation_metric") == 2 * rounds
        # both wrote while the other was writing (otherwise this test would not test concurrency)
        span = reg.sql("SELECT experiment_id, min(logged) AS a, max(logged) AS b FROM pruning_log "
                       "GROUP BY experiment_id ORDER BY experiment_id")
        assert span.loc[0, "a"] < span.loc[1, "b"] and span.loc[1, "a"] < span.loc[0, "b"]


def test_migrates_a_v1_database(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, target=1) == 1
    db.execute("INSERT INTO model (name, config, created) VALUES ('UNet2DModel', '{}', 'then')")
    db.execute("INSERT INTO dataset (name, image_size, created) VALUES ('digits', 16, 'then')")
    db.execute("INSERT INTO experiment (model_id, dataset_id, method, config, seed, started, status, run_dir) "
               "VALUES (1, 1, 'imp', '{}', 0, 'then', 'completed', '/runs/a')")
    db.execute("INSERT INTO pruning_log VALUES (1, 1, ?, 0.2, 'then')", (OVERALL,))
    db.execute("INSERT INTO evaluation_metric (experiment_id, round, name, value, logged) "
               "VALUES (1, 1, 'fid', 40.0, 'then')")
    # version 1 allows one value per (experiment, round, metric): no room for controls
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO evaluation_metric (experiment_id, round, name, value, logged) "
                   "VALUES (1, 1, 'fid', 80.0, 'then')")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()

    with Registry(path) as reg:
        assert reg.version == SCHEMA_VERSION == 2
        old = reg.metrics(wide=False)
        cols = ["round", "variant", "name", "value", "extractor"]
        assert old[cols].values.tolist() == [[1, "ticket", "fid", 40.0, ""]]
        reg.log_metrics(1, 1, {"fid": 80.0}, variant="random_reinit")  # v2 feature on migrated data
        reg.add_report("old run", tmp_path / "r.html", [1])
        wide = reg.metrics()
        assert wide["fid"].tolist() == [40.0, 80.0] and wide["sparsity"].tolist() == [0.2, 0.2]
        assert reg.reports().loc[0, "experiment_ids"] == [1]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this lthdiff"):
        Registry(path)
