"""Experiment registry: one embedded SQLite file that indexes every model, dataset, IMP run,
per-layer sparsity and evaluation metric, so runs can be compared with a pandas query.

Run directories stay the source of truth for weights and masks; the registry holds the small
numbers (and where the run lives).  Design choices:

* stdlib :mod:`sqlite3`, WAL journal and a 30 s busy timeout, and every write in one
  ``BEGIN IMMEDIATE`` transaction: two processes (two notebooks, a sweep) can log into the same
  file at once without losing rows, and an IMP round or an evaluation is stored whole or not at all.
* Values are validated row by row inside the transaction (finite numbers, sparsities in [0, 1]) and
  the schema repeats the rules as ``CHECK`` constraints, so a bad value rolls the whole round back.
* The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` lists the functions
  that bring a database from version ``i`` to ``i + 1`` and is applied in order when a file is opened.
* Re-logging a round replaces its rows, so resuming a run never duplicates anything.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .schema import MIGRATIONS, SCHEMA_VERSION, migrate

__all__ = ["Registry", "STATUSES", "OVERALL", "DEFAULT_PATH"]

DEFAULT_PATH = "runs/lthdiff.db"
STATUSES = ("running", "completed", "failed", "interrupted")
# pruning_log row holding a round's overall sparsity (parameter names always contain dots, so no clash)
OVERALL = "__overall__"


def _now() -> str:
    # microseconds so "latest logged" ordering is meaningful within one second
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json(obj: Any) -> str:
    """Canonical JSON (sorted keys, compact) so equal configs compare equal as text."""
    return json.dumps(obj if obj is not None else {}, sort_keys=True, separators=(",", ":"), default=str)


def _number(value: Any, what: str, *, unit_interval: bool = False) -> float:
    """``value`` as a finite float (``bool`` rejected), else ValueError naming ``what``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a finite number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if unit_interval and not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a sparsity in [0, 1], got {value!r}")
    return value


def _round(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"round must be an int >= 0, got {value!r}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


class Registry:
    """The experiment registry in the SQLite file ``path`` (created with its folder if missing).

    ``timeout`` (seconds) is how long a write waits for another process's transaction.  Use as a
    context manager, or call :meth:`close`; every method is safe to call from several processes.
    """

    def _set_wal(self, timeout: float) -> str:
        # Switching a fresh file to WAL while another process does the same can fail with
        # "database is locked" at once, without honouring busy_timeout: retry until the timeout.
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH, *, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up
        # front and waits on busy_timeout instead of failing on a read-to-write lock upgrade.
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._db.execute("PRAGMA foreign_keys = ON")
        self.journal_mode = self._set_wal(timeout)
        # WAL needs shared memory; on network file systems (e.g. Google Drive) SQLite keeps its
        # rollback journal, which is slower but still safe.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self.version = migrate(self._db)

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Close the connection (the file stays)."""
        self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()):
        """Run a read-only SQL ``query`` and return a pandas DataFrame (for ad-hoc analysis)."""
        import pandas as pd

        return pd.read_sql_query(query, self._db, params=params)

    # ------------------------------------------------------------------ writes
    def get_or_create_model(self, name: str, config: Mapping[str, Any] | None = None) -> int:
        """Id of the model ``name`` with architecture ``config`` (JSON-able dict), inserted if new."""
        name, text = _name(name, "model name"), _json(dict(config or {}))
        with self.transaction() as db:
            row = db.execute("SELECT id FROM model WHERE name = ? AND config = ?", (name, text)).fetchone()
            if row:
                return row[0]
            return db.execute("INSERT INTO model (name, config, created) VALUES (?, ?, ?)",
                              (name, text, _now())).lastrowid

    def get_or_create_dataset(self, name: str, description: str | None = None,
                              image_size: int | None = None) -> int:
        """Id of dataset ``name`` at ``image_size`` pixels (side length), inserted if new."""
        name = _name(name, "dataset name")
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size <= 0):
            raise ValueError(f"image_size must be a positive int (pixels) or None, got {image_size!r}")
        with self.transaction() as db:
            row = db.execute("SELECT id FROM dataset WHERE name = ? AND image_size IS ?",
                             (name, image_size)).fetchone()
            if row:
                if description is not None:
                    db.execute("UPDATE dataset SET description = ? WHERE id = ?", (description, row[0]))
                return row[0]
            return db.execute("INSERT INTO dataset (name, description, image_size, created) VALUES (?, ?, ?, ?)",
                              (name, description, image_size, _now())).lastrowid

    def start_experiment(self, model_id: int, dataset_id: int, method: str = "imp", *,
                         config: Mapping[str, Any] | None = None, seed: int | None = None,
                         run_dir: str | os.PathLike | None = None, status: str = "running") -> int:
        """Insert an experiment (a run of ``method`` on a model and dataset); returns its id.

        ``run_dir`` is stored as an absolute path so :meth:`find_experiment` recognises a rerun.
        """
        _check_status(status)
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO experiment (model_id, dataset_id, method, config, seed, started, status, run_dir) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model_id, dataset_id, _name(method, "method"), _json(dict(config or {})), seed, _now(), status,
                 _abs(run_dir))).lastrowid

    def find_experiment(self, run_dir: str | os.PathLike) -> int | None:
        """Id of the latest experiment stored for ``run_dir`` (compared as absolute paths), or None."""
        row = self._db.execute("SELECT id FROM experiment WHERE run_dir = ? ORDER BY id DESC LIMIT 1",
                               (_abs(run_dir),)).fetchone()
        return row[0] if row else None

    def set_status(self, experiment_id: int, status: str) -> None:
        """Set an experiment's status (one of :data:`STATUSES`)."""
        _check_status(status)
        with self.transaction() as db:
            if db.execute("UPDATE experiment SET status = ? WHERE id = ?", (status, experiment_id)).rowcount != 1:
                raise ValueError(f"no experiment with id {experiment_id!r}")

    def log_round(self, experiment_id: int, round: int, layer_sparsity: Mapping[str, float],
                  metrics: Mapping[str, float] | None = None, *, sparsity: float | None = None) -> None:
        """Store one IMP round in ONE transaction: per-layer sparsities and the ticket's metrics.

        ``layer_sparsity``: {parameter name: fraction pruned in [0, 1]}.  The round's overall
        sparsity is ``sparsity`` or, if None, ``metrics["sparsity"]``; it is kept in ``pruning_log``
        under layer :data:`OVERALL` (not as a metric).  Logging a round again replaces its rows.
        Any invalid value (NaN, non-numeric, out of range) raises ValueError and stores nothing.
        """
        _round(round)
        metrics = dict(metrics or {})
        if sparsity is None:
            sparsity = metrics.pop("sparsity", None)
        else:
            metrics.pop("sparsity", None)
        now = _now()
        with self.transaction() as db:
            _check_experiment(db, experiment_id)
            db.execute("DELETE FROM pruning_log WHERE experiment_id = ? AND round = ?", (experiment_id, round))
            rows = list(layer_sparsity.items()) + ([(OVERALL, sparsity)] if sparsity is not None else [])
            for layer, value in rows:
                # validated inside the transaction: a bad value after good ones must undo them too
                value = _number(value, f"sparsity of layer {layer!r} in round {round}", unit_interval=True)
                db.execute("INSERT INTO pruning_log (experiment_id, round, layer, sparsity, logged) "
                           "VALUES (?, ?, ?, ?, ?)", (experiment_id, round, _name(layer, "layer name"), value, now))
            self._insert_metrics(db, experiment_id, round, metrics, "", "{}", "ticket", now)

    def log_metrics(self, experiment_id: int, round: int, metrics: Mapping[str, float], extractor: str | None = None,
                    settings: Mapping[str, Any] | None = None, variant: str = "ticket") -> None:
        """Store evaluation ``metrics`` ({name: value}) of one round in ONE transaction.

        ``extractor`` names the feature network (e.g. FID's Inception), ``settings`` the evaluation
        settings (number of samples, sampler, steps...), ``variant`` the network evaluated:
        ``"ticket"`` or a control such as ``"random_reinit"``.  The same metric with the same
        extractor/settings/variant is replaced, not duplicated.
        """
        _round(round)
        with self.transaction() as db:
            _check_experiment(db, experiment_id)
            self._insert_metrics(db, experiment_id, round, metrics, extractor or "", _json(dict(settings or {})),
                                 _name(variant, "variant"), _now())

    @staticmethod
    def _insert_metrics(db: sqlite3.Connection, experiment_id: int, round: int, metrics: Mapping[str, Any],
                        extractor: str, settings: str, variant: str, now: str) -> None:
        for name, value in metrics.items():
            value = _number(value, f"metric {name!r} of round {round} ({variant})")
            db.execute(
                "INSERT INTO evaluation_metric "
                "(experiment_id, round, name, value, extractor, settings, variant, logged) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (experiment_id, round, variant, name, extractor, settings) "
                "DO UPDATE SET value = excluded.value, logged = excluded.logged",
                (experiment_id, round, _name(name, "metric name"), value, extractor, settings, variant, now))

    def add_report(self, title: str, path: str | os.PathLike, experiment_ids: Iterable[int] = ()) -> int:
        """Record a report file (absolute ``path``) and link it to ``experiment_ids``; returns its id.

        Rebuilding a report at the same path updates its row instead of adding one.
        """
        path_text = _abs(path)
        with self.transaction() as db:
            db.execute("INSERT INTO report (title, created, path) VALUES (?, ?, ?) "
                       "ON CONFLICT (path) DO UPDATE SET title = excluded.title, created = excluded.created",
                       (_name(title, "report title"), _now(), path_text))
            rid = db.execute("SELECT id FROM report WHERE path = ?", (path_text,)).fetchone()[0]
            for eid in experiment_ids:
                _check_experiment(db, eid)
                db.execute("INSERT OR IGNORE INTO report_experiment (report_id, experiment_id) VALUES (?, ?)",
                           (rid, eid))
            return rid

    # ------------------------------------------------------------------ queries
    def experiments(self):
        """All experiments as a DataFrame: ids, model and dataset names, method, seed, status,
        run_dir, started, ``rounds`` logged, and ``config`` parsed to a dict."""
        df = self.sql("""
            SELECT e.id AS experiment_id, m.name AS model, d.name AS dataset, d.image_size, e.method, e.seed,
                   e.status, e.started, e.run_dir, e.config,
                   (SELECT count(DISTINCT p.round) FROM pruning_log p WHERE p.experiment_id = e.id) AS rounds
            FROM experiment e JOIN model m ON m.id = e.model_id JOIN dataset d ON d.id = e.dataset_id
            ORDER BY e.id""")
        df["config"] = df["config"].map(json.loads)
        return df

    def metrics(self, experiment_ids: Iterable[int] | int | None = None, metric: str | Sequence[str] | None = None,
                *, wide: bool = True):
        """Evaluation metrics as a DataFrame.

        ``wide=True`` (default): one row per (experiment_id, round, variant) with the round's overall
        ``sparsity`` (from ``pruning_log``) and one column per metric; if a metric was stored with
        several extractors/settings, the latest logged value is shown.  ``wide=False``: one row per
        stored value with its ``extractor``, ``settings`` (dict) and ``logged`` time.
        ``experiment_ids`` / ``metric`` filter (an id or a list, a name or a list).
        """
        import pandas as pd

        where, params = [], []
        if experiment_ids is not None:
            ids = [experiment_ids] if isinstance(experiment_ids, int) else list(experiment_ids)
            where.append(f"m.experiment_id IN ({','.join('?' * len(ids))})")
            params += ids
        if metric is not None:
            names = [metric] if isinstance(metric, str) else list(metric)
            where.append(f"m.name IN ({','.join('?' * len(names))})")
            params += names
        df = self.sql(f"""
            SELECT m.experiment_id, m.round, m.variant, p.sparsity, m.name, m.value, m.extractor, m.settings, m.logged
            FROM evaluation_metric m
            LEFT JOIN pruning_log p ON p.experiment_id = m.experiment_id AND p.round = m.round AND p.layer = ?
            {'WHERE ' + ' AND '.join(where) if where else ''}
            ORDER BY m.experiment_id, m.round, m.variant, m.logged""", [OVERALL, *params])
        if not wide:
            df["settings"] = df["settings"].map(json.loads)
            return df
        keys = ["experiment_id", "round", "variant"]
        if df.empty:
            return pd.DataFrame(columns=[*keys, "sparsity"])
        # rows are ordered by logged time, so "last" is the latest measurement
        values = df.groupby([*keys, "name"], sort=False)["value"].last().unstack("name")
        values = values[list(dict.fromkeys(df["name"]))]  # metrics in the order first logged
        out = df.groupby(keys, sort=False)[["sparsity"]].first().join(values).reset_index()
        out.columns.name = None
        out["_v"] = out["variant"] != "ticket"  # ticket first, controls after, per round
        return out.sort_values(["experiment_id", "round", "_v", "variant"]).drop(columns="_v").reset_index(drop=True)

    def pruning(self, experiment_id: int):
        """Per-layer sparsity of one experiment: columns round, layer, sparsity, and the round's ``overall``."""
        df = self.sql("""
            SELECT p.round, p.layer, p.sparsity, o.sparsity AS overall FROM pruning_log p
            LEFT JOIN pruning_log o ON o.experiment_id = p.experiment_id AND o.round = p.round AND o.layer = ?
            WHERE p.experiment_id = ? AND p.layer != ? ORDER BY p.round, p.rowid""",
                      (OVERALL, experiment_id, OVERALL))
        return df

    def reports(self):
        """Registered reports with the experiment ids each covers."""
        df = self.sql("""
            SELECT r.id AS report_id, r.title, r.created, r.path, group_concat(l.experiment_id) AS experiment_ids
            FROM report r LEFT JOIN report_experiment l ON l.report_id = r.id GROUP BY r.id ORDER BY r.id""")
        df["experiment_ids"] = df["experiment_ids"].map(
            lambda s: sorted(int(x) for x in s.split(",")) if isinstance(s, str) else [])
        return df


def _abs(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; accepted: {list(STATUSES)}")


def _check_experiment(db: sqlite3.Connection, experiment_id: int) -> None:
    # the foreign key would also refuse it, but this error names the id
    if db.execute("SELECT 1 FROM experiment WHERE id = ?", (experiment_id,)).fetchone() is None:
        raise ValueError(f"no experiment with id {experiment_id!r}; create one with start_experiment()")
