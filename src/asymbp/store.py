"""The results database: one SQLite file (WAL mode), written only by the sweep's driver.

Tables (schema version in `meta`, migrated forward on open):

- `runs`: one row per run, keyed by `run_key` (a hash of the experiment and the canonical
  config, `asymbp.sweep.plan.run_key`), with the full config JSON, provenance (package version,
  git commit, host, device), status (pending / running / done / diverged / failed, with the error
  text), start and end times and the result summary.
- `epochs`: one row per finished epoch of a run, alignment included as JSON; written as each
  epoch ends, so a killed sweep loses at most the epochs in flight.

The analysis view is pandas: `load(db)` (one row per run, DESIGN §9), `load_epochs(db)` and
`load_alignment(db)` (long form).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import AsymbpError

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")

# version -> the SQL that brings a database from the previous version to it
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS runs (
        run_key TEXT PRIMARY KEY,
        experiment TEXT NOT NULL,
        method TEXT NOT NULL,            -- the column label, e.g. uSF+BN+BM@top
        dataset TEXT NOT NULL,
        model TEXT,
        lr_mult REAL NOT NULL,
        seed INTEGER NOT NULL,
        procedure TEXT NOT NULL DEFAULT '',
        epochs INTEGER,                  -- planned
        config TEXT NOT NULL,            -- the full TrainConfig as JSON
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'diverged', 'failed')),
        error TEXT,
        version TEXT, git_commit TEXT, host TEXT, device TEXT,
        created TEXT, started TEXT, finished TEXT,
        epochs_done INTEGER NOT NULL DEFAULT 0,
        test_error REAL, best_test_error REAL, best_epoch INTEGER,
        val_error REAL, val_epoch INTEGER, honest_test_error REAL,
        diverged_epoch INTEGER, seconds REAL, params INTEGER
    );
    CREATE INDEX IF NOT EXISTS runs_cell ON runs (experiment, dataset, method);
    CREATE TABLE IF NOT EXISTS epochs (
        run_key TEXT NOT NULL REFERENCES runs (run_key),
        epoch INTEGER NOT NULL,
        train_loss REAL, train_error REAL, test_error REAL, val_error REAL,
        lr REAL, batch_size INTEGER, seconds REAL,
        alignment TEXT,                  -- JSON list of per-layer dicts
        PRIMARY KEY (run_key, epoch)
    );
    """,
}

SQLITE_MAGIC = b"SQLite format 3\x00"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (the sweep's pid in `meta`: is it still
    writing?). A process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_safe(obj):
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def check(path: str | os.PathLike) -> int:
    """Validate a database path without writing anything; return its schema version (0 when the
    file does not exist yet). Raises the one-line error for a non-SQLite file, a newer schema, or
    a missing parent folder."""
    p = Path(path)
    if p.is_dir():
        raise AsymbpError(f"{p} is a folder; --db needs a database file path")
    if not p.exists():
        if not p.parent.exists() and str(p.parent) not in ("", "."):
            raise AsymbpError(f"folder {p.parent} does not exist; create it or choose another --db")
        return 0
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        return 0
    if head != SQLITE_MAGIC:
        raise AsymbpError(f"{p} is not an SQLite database (asymbp's results store); give a new "
                          "path or an existing asymbp database with --db")
    try:
        # immutable: a peek that creates no -wal/-shm files next to a database it may refuse
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                   "name='meta'").fetchone()
            if not has_meta:
                tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise AsymbpError(f"{p} is an SQLite database but not an asymbp results "
                                      "store (no meta table); give another --db")
                return 0
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise AsymbpError(f"{p} is not a readable SQLite database ({err})") from None
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise AsymbpError(f"{p} has results schema version {version}, newer than this asymbp "
                          f"understands ({SCHEMA_VERSION}); upgrade asymbp to read it")
    return version


def check_writable(path: str | os.PathLike) -> None:
    """Raise the one-line error when a sweep could not write the database at `path`: the file
    is read-only, or its folder is (SQLite's -wal/-shm files, the sweep's lock and its
    checkpoints all live beside it)."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.exists() and not os.access(p, os.W_OK):
        raise AsymbpError(f"{p} is read-only and the sweep writes its results there; make it "
                          f"writable (chmod u+w {p}) or give another --db")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise AsymbpError(f"folder {folder} is not writable and the sweep writes {p.name} and "
                          "its -wal, -shm, .lock and .runs files there; make it writable or "
                          "give a --db in a writable folder")


def _connect_readonly(p: Path) -> sqlite3.Connection:
    """A read-only connection that works on a read-only file or in a read-only folder.

    `mode=ro` sees a running sweep's writes, but on a WAL database it must create the -shm
    file beside it, which a read-only folder refuses. Without a -wal file the database file
    holds every result, so it is then read as immutable (SQLite writes nothing); with a
    non-empty -wal the results in it cannot be read without a writable -shm."""
    uri = p.resolve().as_uri()  # percent-encoded, so '?' or '#' in a name stay in the path
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError as err:
        con.close()
        wal = Path(f"{p}-wal")
        if wal.exists() and wal.stat().st_size:
            raise AsymbpError(
                f"cannot read {p} ({err}): {wal.name} holds results not yet merged into it and "
                f"SQLite must write {p.name}-shm beside it; make the folder writable, or copy "
                f"{p.name} with {wal.name} to a writable folder and read the copy") from None
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)


def _check_readable(p: Path, con: sqlite3.Connection) -> None:
    """A database to read must hold asymbp's tables (an empty file does not)."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = {"meta", "runs", "epochs"} - tables
    if missing:
        what = "an empty file" if p.stat().st_size == 0 else (
            "an SQLite database without asymbp's tables (" + ", ".join(sorted(missing)) + ")")
        raise AsymbpError(f"{p} is {what}, not an asymbp results database; give the --db a "
                          "sweep wrote ('asymbp sweep --db ...')")


class Store:
    """A connection to a results database (the driver's; one writer)."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False):
        self.path = Path(path)
        version = check(self.path)
        if readonly:
            if not self.path.exists():
                raise AsymbpError(f"no results database at {self.path}; run 'asymbp sweep "
                                  "--db ...' first")
            self.con = _connect_readonly(self.path)
            try:
                _check_readable(self.path, self.con)
            except sqlite3.DatabaseError as err:
                self.con.close()
                raise AsymbpError(f"cannot read the results database {self.path} ({err})"
                                  ) from None
            except BaseException:
                self.con.close()
                raise
        else:
            check_writable(self.path)
            self.con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                self.con.execute("PRAGMA journal_mode=WAL")
                self.con.execute("PRAGMA synchronous=NORMAL")
                self._migrate(version)
            except sqlite3.OperationalError as err:
                self.con.close()
                raise AsymbpError(f"cannot write the results database {self.path} ({err}); "
                                  "check that it and its folder are writable, or give another "
                                  "--db") from None
        self.version = version if readonly else SCHEMA_VERSION

    def _migrate(self, version: int) -> None:
        with self.con:
            self.con.execute("BEGIN IMMEDIATE")
            self.con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        self.con.execute(stmt)
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                                 (str(v),))

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- meta -----------------------------------------------------------------------------

    def set_meta(self, **values) -> None:
        with self.con:
            self.con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, str(v)) for k, v in values.items()])

    def meta(self) -> dict:
        return dict(self.con.execute("SELECT key, value FROM meta").fetchall())

    # ---- writing (the driver only) ----------------------------------------------------------

    def add_runs(self, runs) -> int:
        """Insert `RunSpec`s as pending; runs already present are left alone. Returns how many
        were new."""
        from .train import TrainConfig

        # The full config (every field, defaults filled in), so each row can be re-run as is.
        rows = [(r.key, r.experiment, r.method, r.dataset, r.config.get("model"), r.lr_mult,
                 r.seed, r.procedure, r.config.get("epochs"),
                 json.dumps(json_safe(TrainConfig.from_dict(dict(r.config)).to_dict()),
                            sort_keys=True), _now()) for r in runs]
        with self.con:
            before = self.con.total_changes
            self.con.executemany(
                "INSERT OR IGNORE INTO runs (run_key, experiment, method, dataset, model, "
                "lr_mult, seed, procedure, epochs, config, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return self.con.total_changes - before

    def _column(self, column: str, keys) -> dict:
        """run_key -> `column` of the runs among `keys` that are stored."""
        keys = list(keys)
        out = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of ? in one statement
            chunk = keys[i:i + 500]
            q = f"SELECT run_key, {column} FROM runs WHERE run_key IN ({','.join('?' * len(chunk))})"
            out.update(self.con.execute(q, chunk).fetchall())
        return out

    def statuses(self, keys) -> dict[str, str]:
        """run_key -> status of the runs among `keys` that are stored."""
        return self._column("status", keys)

    def epochs_done(self, keys) -> dict[str, int]:
        """run_key -> how many epochs are stored, for the runs among `keys` that are stored."""
        return self._column("epochs_done", keys)

    def start(self, key: str, host: str, device: str, version: str, commit: str | None) -> None:
        with self.con:
            self.con.execute(
                "UPDATE runs SET status='running', error=NULL, host=?, device=?, version=?, "
                "git_commit=?, started=COALESCE(started, ?), finished=NULL WHERE run_key=?",
                (host, device, version, commit, _now(), key))

    def add_epoch(self, key: str, row: dict) -> None:
        align = row.get("alignment")
        with self.con:
            self.con.execute(
                "INSERT OR REPLACE INTO epochs (run_key, epoch, train_loss, train_error, "
                "test_error, val_error, lr, batch_size, seconds, alignment) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, int(row["epoch"]), _num(row.get("train_loss")),
                 _num(row.get("train_error")), _num(row.get("test_error")),
                 _num(row.get("val_error")), row.get("lr"), row.get("batch_size"),
                 row.get("seconds"), json.dumps(json_safe(align)) if align else None))
            self.con.execute("UPDATE runs SET epochs_done=(SELECT count(*) FROM epochs WHERE "
                             "run_key=?) WHERE run_key=?", (key, key))

    def reset_epochs(self, key: str) -> None:
        """Forget a run's stored epochs (it starts again from epoch 1)."""
        with self.con:
            self.con.execute("BEGIN IMMEDIATE")
            self.con.execute("DELETE FROM epochs WHERE run_key=?", (key,))
            self.con.execute("UPDATE runs SET epochs_done=0 WHERE run_key=?", (key,))

    def finish(self, key: str, result: dict) -> None:
        """Record a run's result dict (from `train`): status done or diverged, its summary."""
        status = "diverged" if result.get("diverged") else "done"
        with self.con:
            self.con.execute(
                "UPDATE runs SET status=?, error=NULL, finished=?, test_error=?, "
                "best_test_error=?, best_epoch=?, val_error=?, val_epoch=?, honest_test_error=?, "
                "diverged_epoch=?, seconds=?, params=?, version=COALESCE(?, version), "
                "git_commit=COALESCE(?, git_commit), host=COALESCE(?, host) WHERE run_key=?",
                (status, _now(), _num(result.get("test_error")),
                 _num(result.get("best_test_error")), result.get("best_epoch"),
                 _num(result.get("val_error")), result.get("val_epoch"),
                 _num(result.get("honest_test_error")), result.get("diverged_epoch"),
                 result.get("seconds"), result.get("params"), result.get("version"),
                 result.get("commit"), result.get("host"), key))

    def fail(self, key: str, error: str) -> None:
        with self.con:
            self.con.execute("UPDATE runs SET status='failed', error=?, finished=? "
                             "WHERE run_key=?", (error, _now(), key))


# ---- the pandas view ----------------------------------------------------------------------

RUN_COLUMNS = ["run_key", "experiment", "method", "dataset", "model", "lr_mult", "seed",
               "procedure", "status", "epochs", "epochs_done", "test_error", "best_test_error",
               "best_epoch", "val_error", "val_epoch", "honest_test_error", "diverged_epoch",
               "seconds", "params", "version", "commit", "host", "device", "created", "started",
               "finished", "error", "config"]
_FLOATS = ["lr_mult", "test_error", "best_test_error", "val_error", "honest_test_error",
           "seconds"]
_INTS = ["seed", "epochs", "epochs_done", "best_epoch", "val_epoch", "diverged_epoch", "params"]


def _read(db, sql: str) -> pd.DataFrame:
    store = db if isinstance(db, Store) else Store(db, readonly=True)
    try:
        return pd.read_sql_query(sql, store.con)
    finally:
        if store is not db:
            store.close()


def _types(df: pd.DataFrame) -> pd.DataFrame:
    for c in _FLOATS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in _INTS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def load(db_path) -> pd.DataFrame:
    """One row per run (DESIGN §9): method, dataset, lr_mult, seed, status, best_test_error,
    the other result columns, provenance, and `config` (the full config as a dict)."""
    df = _read(db_path, "SELECT *, git_commit AS \"commit\" FROM runs ORDER BY rowid")
    df = _types(df)
    df["config"] = [json.loads(c) for c in df["config"]]
    return df[RUN_COLUMNS].reset_index(drop=True)


def load_epochs(db_path) -> pd.DataFrame:
    """One row per run × finished epoch, with the run's experiment, method, dataset, lr_mult,
    seed, procedure and status joined in; `alignment` is the per-layer list (or None)."""
    df = _read(db_path, "SELECT e.run_key, r.experiment, r.method, r.dataset, r.lr_mult, "
                        "r.seed, r.procedure, r.status, e.epoch, e.lr, e.batch_size, "
                        "e.train_loss, e.train_error, e.test_error, e.val_error, e.seconds, "
                        "e.alignment FROM epochs e JOIN runs r USING (run_key) "
                        "ORDER BY r.rowid, e.epoch")
    for c in ("train_loss", "train_error", "test_error", "val_error", "lr", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df = _types(df)
    df["alignment"] = [json.loads(a) if isinstance(a, str) else None for a in df["alignment"]]
    return df


ALIGNMENT_COLUMNS = ["run_key", "experiment", "method", "dataset", "lr_mult", "seed", "epoch",
                     "layer", "scheme", "angle", "sign_concordance", "norm_ratio", "grad_angle"]


def load_alignment(db_path) -> pd.DataFrame:
    """Long form: one row per run × epoch × asymmetric layer, with the V–W angle, sign
    concordance, norm ratio and the error-signal angle."""
    ep = load_epochs(db_path)
    rows = []
    for rec in ep.itertuples(index=False):
        for a in rec.alignment or ():
            rows.append({"run_key": rec.run_key, "experiment": rec.experiment,
                         "method": rec.method, "dataset": rec.dataset, "lr_mult": rec.lr_mult,
                         "seed": rec.seed, "epoch": rec.epoch, "layer": a.get("layer"),
                         "scheme": a.get("scheme"), "angle": a.get("angle"),
                         "sign_concordance": a.get("sign_concordance"),
                         "norm_ratio": a.get("norm_ratio"), "grad_angle": a.get("grad_angle")})
    df = pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)
    for c in ("angle", "sign_concordance", "norm_ratio", "grad_angle", "lr_mult"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return _types(df)
