"""The registry's SQLite schema and its migrations (``PRAGMA user_version``): what each version adds,
and :func:`migrate`, which brings a file to the current version in one transaction."""
from __future__ import annotations

import sqlite3
from typing import Callable

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run SQL statements one by one inside the caller's transaction.

    (``executescript`` would COMMIT the open transaction first, breaking migrate's all-or-nothing.)
    """
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            db.execute(buf)
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")


def _v1(db: sqlite3.Connection) -> None:
    """Version 1: models, datasets, experiments, per-layer pruning log, one value per metric and round."""
    _script(db, """
        CREATE TABLE model (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            config TEXT NOT NULL CHECK (json_valid(config)),
            created TEXT NOT NULL,
            UNIQUE (name, config)
        );
        CREATE TABLE dataset (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            description TEXT,
            image_size INTEGER CHECK (image_size IS NULL OR image_size > 0),
            created TEXT NOT NULL
        );
        CREATE TABLE experiment (
            id INTEGER PRIMARY KEY,
            model_id INTEGER NOT NULL REFERENCES model(id),
            dataset_id INTEGER NOT NULL REFERENCES dataset(id),
            method TEXT NOT NULL,
            config TEXT NOT NULL CHECK (json_valid(config)),
            seed INTEGER,
            started TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
            run_dir TEXT
        );
        CREATE INDEX experiment_run_dir ON experiment(run_dir);
        CREATE TABLE pruning_log (
            experiment_id INTEGER NOT NULL REFERENCES experiment(id) ON DELETE CASCADE,
            round INTEGER NOT NULL CHECK (round >= 0),
            layer TEXT NOT NULL CHECK (length(layer) > 0),
            sparsity REAL NOT NULL CHECK (typeof(sparsity) IN ('real', 'integer') AND sparsity BETWEEN 0 AND 1),
            logged TEXT NOT NULL,
            PRIMARY KEY (experiment_id, round, layer)
        );
        CREATE TABLE evaluation_metric (
            experiment_id INTEGER NOT NULL REFERENCES experiment(id) ON DELETE CASCADE,
            round INTEGER NOT NULL CHECK (round >= 0),
            name TEXT NOT NULL CHECK (length(name) > 0),
            value REAL NOT NULL CHECK (typeof(value) IN ('real', 'integer') AND abs(value) <= 1.7976931348623157e308),
            logged TEXT NOT NULL
        );
        CREATE UNIQUE INDEX evaluation_metric_key_v1 ON evaluation_metric(experiment_id, round, name);
    """)


def _v2(db: sqlite3.Connection) -> None:
    """Version 2: metrics carry extractor, settings and variant (ticket or a control); reports."""
    _script(db, """
        ALTER TABLE evaluation_metric ADD COLUMN extractor TEXT NOT NULL DEFAULT '';
        ALTER TABLE evaluation_metric ADD COLUMN settings TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings));
        ALTER TABLE evaluation_metric ADD COLUMN variant TEXT NOT NULL DEFAULT 'ticket' CHECK (length(variant) > 0);
        DROP INDEX evaluation_metric_key_v1;
        CREATE UNIQUE INDEX evaluation_metric_key
            ON evaluation_metric(experiment_id, round, variant, name, extractor, settings);
        CREATE TABLE report (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created TEXT NOT NULL,
            path TEXT NOT NULL UNIQUE
        );
        CREATE TABLE report_experiment (
            report_id INTEGER NOT NULL REFERENCES report(id) ON DELETE CASCADE,
            experiment_id INTEGER NOT NULL REFERENCES experiment(id) ON DELETE CASCADE,
            PRIMARY KEY (report_id, experiment_id)
        );
    """)


# MIGRATIONS[i] upgrades a database at user_version i to i + 1; append, never edit, released steps.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply :data:`MIGRATIONS` to bring ``db`` (autocommit connection) to version ``target``; returns it.

    Runs in one ``BEGIN IMMEDIATE`` transaction, so two processes opening a new file at once
    cannot both create the tables, and a failed step leaves the file at its old version.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target schema version {target} unknown; accepted: 0..{SCHEMA_VERSION}")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"database schema version {version} is newer than this lthdiff "
                               f"(knows versions up to {SCHEMA_VERSION}); upgrade lthdiff")
        for step in range(version, target):
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return max(version, target)
