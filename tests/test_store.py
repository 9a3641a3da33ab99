"""The results database (asymbp.store): schema, migration, unique keys, the pandas views."""

import math
import sqlite3

import pytest

from asymbp import store
from asymbp.errors import AsymbpError
from asymbp.sweep import run_key


def test_new_database_is_wal_and_versioned(tmp_path):
    db = tmp_path / "r.db"
    with store.Store(db):
        pass
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == \
        str(store.SCHEMA_VERSION)
    assert store.check(db) == store.SCHEMA_VERSION


def test_a_run_key_cannot_be_stored_twice(tmp_path, some_runs):
    runs = some_runs(tmp_path)
    with store.Store(tmp_path / "r.db") as s:
        assert s.add_runs(runs) == 4
        assert s.add_runs(runs + some_runs(tmp_path)) == 0
        with pytest.raises(sqlite3.IntegrityError):
            s.con.execute("INSERT INTO runs (run_key, experiment, method, dataset, lr_mult, "
                          "seed, config) VALUES (?, 'x', 'x', 'x', 1, 1, '{}')", (runs[0].key,))
    assert len(store.load(tmp_path / "r.db")) == 4


def test_run_key_ignores_where_a_run_executes_but_not_what_it_computes():
    base = {"dataset": "mnist5k", "method": "SGD", "lr_mult": 1.0, "seed": 1}
    assert run_key("A", base) == run_key("A", {**base, "device": "cuda", "data_dir": "/x"})
    assert run_key("A", base) != run_key("A", {**base, "seed": 2})
    assert run_key("A", base) != run_key("C1", base)
    assert run_key("A", base) != run_key("A", {**base, "epochs": 3})


def test_views_have_the_contract_columns(tmp_path, epoch, result, some_runs):
    db = tmp_path / "r.db"
    runs = some_runs(tmp_path)
    with store.Store(db) as s:
        s.add_runs(runs)
        s.start(runs[0].key, "h", "cpu", "0.1.0", "abc")
        for n in (1, 2, 2):  # a re-sent epoch (resume) replaces, never duplicates
            s.add_epoch(runs[0].key, epoch(n))
        s.finish(runs[0].key, result(3.0))
        s.start(runs[1].key, "h", "cpu", "0.1.0", "abc")
        s.add_epoch(runs[1].key, {**epoch(1), "train_loss": math.nan, "test_error": math.nan})
        s.finish(runs[1].key, {**result(math.nan, diverged=True)})
        s.fail(runs[2].key, "RuntimeError: boom")
    df = store.load(db)
    for c in ["method", "dataset", "lr_mult", "seed", "status", "best_test_error", "run_key",
              "experiment", "model", "epochs", "test_error", "val_error", "honest_test_error",
              "best_epoch", "diverged_epoch", "seconds", "version", "commit", "host", "device",
              "started", "finished", "error", "config"]:
        assert c in df.columns, c
    assert list(df.status) == ["done", "diverged", "failed", "pending"]
    assert df.best_test_error[0] == 3.0 and math.isnan(df.best_test_error[1])
    assert df.epochs_done[0] == 2 and df.commit[0] == "abc"
    assert df.config[0]["method"] == "SGD" and df.config[0]["model"] == "mlp"
    assert df.error[2] == "RuntimeError: boom"

    ep = store.load_epochs(db)
    assert list(ep.epoch) == [1, 2, 1]
    assert {"method", "dataset", "lr_mult", "seed", "train_loss", "alignment"} <= set(ep.columns)
    assert math.isnan(ep.train_loss[2])
    al = store.load_alignment(db)
    assert list(al.columns) == store.ALIGNMENT_COLUMNS
    assert list(al.angle) == [31.0, 32.0, 31.0] and al.grad_angle.isna().all()


def test_empty_database_views(tmp_path):
    db = tmp_path / "r.db"
    store.Store(db).close()
    assert store.load(db).empty and store.load_epochs(db).empty and store.load_alignment(db).empty


def test_an_older_schema_is_migrated_keeping_its_rows(tmp_path, monkeypatch, some_runs):
    db = tmp_path / "r.db"
    runs = some_runs(tmp_path)
    with store.Store(db) as s:
        s.add_runs(runs)
    monkeypatch.setitem(store.MIGRATIONS, 2, "ALTER TABLE runs ADD COLUMN note TEXT")
    monkeypatch.setattr(store, "SCHEMA_VERSION", 2)
    with store.Store(db) as s:
        assert s.meta()["schema_version"] == "2"
        assert s.con.execute("SELECT count(note), count(*) FROM runs").fetchone() == (0, 4)


def test_a_newer_schema_is_refused_and_untouched(tmp_path):
    db = tmp_path / "r.db"
    store.Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(AsymbpError, match="newer"):
        store.Store(db)
    with pytest.raises(AsymbpError, match="newer"):
        store.load(db)
    assert db.read_bytes() == before


@pytest.mark.parametrize("content", [b"hello, not a database\n", b"x" * 5000])
def test_a_file_that_is_not_sqlite_is_refused_and_untouched(tmp_path, content):
    db = tmp_path / "r.db"
    db.write_bytes(content)
    with pytest.raises(AsymbpError, match="not an SQLite database"):
        store.Store(db)
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "r.db"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]


def test_another_sqlite_database_is_refused(tmp_path):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(AsymbpError, match="not an asymbp results store"):
        store.Store(db)


def test_loading_a_missing_database_is_a_user_error(tmp_path):
    with pytest.raises(AsymbpError, match="no results database"):
        store.load(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_statuses_and_epochs_done_by_run_key(tmp_path, epoch, some_runs):
    runs = some_runs(tmp_path)
    keys = [r.key for r in runs]
    with store.Store(tmp_path / "r.db") as s:
        s.add_runs(runs)
        s.start(keys[0], "h", "cpu", "0.1.0", "abc")
        s.add_epoch(keys[0], epoch(1))
        s.add_epoch(keys[0], epoch(2))
        asked = [keys[0], keys[1], "not-stored"] + [f"x{i}" for i in range(600)]  # > one chunk
        assert s.epochs_done(asked) == {keys[0]: 2, keys[1]: 0}
        assert s.statuses(asked) == {keys[0]: "running", keys[1]: "pending"}
        assert s.epochs_done([]) == {}


def test_pid_alive(tmp_path):
    import os
    import subprocess
    import sys

    assert store.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert not store.pid_alive(child.pid)
