"""A results database written by asymbp 0.1.0 (tests/fixtures/db_v0_1, see its README) reports
exactly as it did then and resumes without redoing or duplicating a run: run keys, the store's
columns, tables and checkpoints stay compatible across refactors and new config fields."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from asymbp import store
from asymbp.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "db_v0_1"
SWEEP = ["sweep", "--experiment", "A", "--methods", "SGD,uSF+BN+BM,uSF+BM", "--datasets",
         "mnist1d", "--epochs", "3", "--lr-mults", "10,1", "--workers", "1", "--threads", "1",
         "--no-progress"]


@pytest.fixture
def old_db(tmp_path):
    shutil.copy(FIXTURE / "old.db", tmp_path / "old.db")
    shutil.copytree(FIXTURE / "old.db.runs", tmp_path / "old.db.runs")
    return tmp_path / "old.db"


@pytest.mark.parametrize("extra, expected", [([], "table_A.md"), (["--paper"], "table_A_paper.md"),
                                             (["--format", "csv"], "table_A.csv")])
def test_old_database_reports_identically(old_db, capsys, extra, expected):
    assert main(["table", "--experiment", "A", "--db", str(old_db), *extra]) == 0
    assert capsys.readouterr().out == (FIXTURE / expected).read_text()


def test_old_database_plans_the_same_run_keys(old_db, capsys):
    assert main([*SWEEP, "--db", str(old_db), "--dry-run"]) == 0
    assert capsys.readouterr().out == (FIXTURE / "dryrun.txt").read_text().replace(
        "old.db", str(old_db))


@pytest.mark.slow
def test_old_database_resumes_without_redoing_anything(old_db, capsys):
    before = store.load(old_db).set_index("run_key")
    assert main([*SWEEP, "--db", str(old_db)]) == 0
    after = store.load(old_db).set_index("run_key")
    assert sorted(after.index) == sorted(before.index)  # no run added: the keys are unchanged
    assert (after["status"] == "done").all() and (after["epochs_done"] == 3).all()
    done = before.index[before["status"] == "done"]
    for col in ("finished", "best_test_error", "test_error", "seconds"):
        assert after.loc[done, col].equals(before.loc[done, col]), col  # not run again
    con = sqlite3.connect(old_db)
    per_run = dict(con.execute("SELECT run_key, COUNT(*) FROM epochs GROUP BY run_key"))
    con.close()
    assert set(per_run.values()) == {3}  # every epoch once: the resumed run duplicated none
    resumed = before.index[before["status"] == "running"]
    assert len(resumed) == 1 and not (old_db.parent / "old.db.runs" / f"{resumed[0]}.pt").exists()
    out = capsys.readouterr().out
    assert "3 of 8 runs already done" in out and "1 resume from their last epoch" in out
