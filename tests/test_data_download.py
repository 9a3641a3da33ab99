"""`asymbp datasets download` against a local HTTP server on 127.0.0.1: verified files, resume
with Range, a wrong checksum, a truncated transfer; and the `asymbp datasets` table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asymbp.cli import main
from asymbp.data import load
from asymbp.data import download as dl
from asymbp.errors import AsymbpError


def test_download_verify_and_load(served_ranges, tmp_path, server, monkeypatch, pin, write_mnist):
    mirror, url = server
    d = write_mnist(mirror / "mnist")
    pin(monkeypatch, "mnist", mirror / "mnist", "sha256")
    data = tmp_path / "data"
    paths = dl.download("mnist", data, mirror=url, progress=False, log=lambda *_: None)
    assert sorted(p.name for p in paths) == sorted(r.name for r in dl.SOURCES["mnist"])
    for p in paths:
        assert p.read_bytes() == (mirror / "mnist" / p.name).read_bytes()
    assert not list((data / "mnist").glob("*.part"))
    assert dl.status("mnist", data)[0] == "ready"
    np.testing.assert_array_equal(load("mnist", data).y_train, d["train"][1])
    # Again: nothing fetched, files verified from the stamp.
    served_ranges.clear()
    dl.download("mnist", data, mirror=url, progress=False, log=lambda *_: None)
    assert served_ranges == []


def test_mirror_from_environment(tmp_path, server, monkeypatch, pin, write_cifar):
    mirror, url = server
    write_cifar(mirror / "cifar10")
    pin(monkeypatch, "cifar10", mirror / "cifar10")
    monkeypatch.setenv("ASYMBP_MIRROR", url)
    monkeypatch.setenv("ASYMBP_DATA", str(tmp_path / "data"))
    assert main(["datasets", "download", "cifar10", "--no-progress"]) == 0
    assert load("cifar10").x_train.shape == (100, 3, 32, 32)


def test_wrong_checksum_is_named_and_not_kept(tmp_path, server, monkeypatch, pin, write_mnist):
    mirror, url = server
    write_mnist(mirror / "mnist")
    pin(monkeypatch, "mnist", mirror / "mnist", wrong="t10k-images-idx3-ubyte.gz")
    data = tmp_path / "data"
    with pytest.raises(AsymbpError) as err:
        dl.download("mnist", data, mirror=url, progress=False, log=lambda *_: None)
    msg = str(err.value)
    assert "\n" not in msg and "t10k-images-idx3-ubyte.gz" in msg and "does not match" in msg
    assert not (data / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not (data / "mnist" / "t10k-images-idx3-ubyte.gz.part").exists()


def test_truncated_transfer_then_resume(served_ranges, tmp_path, server, monkeypatch, pin, write_cifar):
    mirror, url = server
    write_cifar(mirror / "cifar10")
    pin(monkeypatch, "cifar10", mirror / "cifar10")
    data = tmp_path / "data"
    with pytest.raises(AsymbpError) as err:  # the server hangs up half way
        dl.download("cifar10", data, mirror=url + "/short", progress=False, log=lambda *_: None)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "truncated" in msg and "\n" not in msg
    part = data / "cifar10" / "cifar-10-python.tar.gz.part"
    size = (mirror / "cifar10" / "cifar-10-python.tar.gz").stat().st_size
    assert part.stat().st_size == size // 2
    assert dl.status("cifar10", data)[0] == "missing"
    dl.download("cifar10", data, mirror=url, progress=False, log=lambda *_: None)  # resumes
    assert served_ranges[-1] == f"bytes={size // 2}-"
    assert (data / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == (
        mirror / "cifar10" / "cifar-10-python.tar.gz").read_bytes()


def test_server_without_range_starts_over(served_ranges, tmp_path, server, monkeypatch, pin, write_cifar):
    mirror, url = server
    write_cifar(mirror / "cifar10")
    pin(monkeypatch, "cifar10", mirror / "cifar10")
    part = tmp_path / "cifar10" / "cifar-10-python.tar.gz.part"
    part.parent.mkdir()
    part.write_bytes(b"stale bytes from elsewhere")
    dl.download("cifar10", tmp_path, mirror=url + "/norange", progress=False, log=lambda *_: None)
    assert served_ranges == ["bytes=26-"]  # asked to resume, got the whole file: starts over
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == (
        mirror / "cifar10" / "cifar-10-python.tar.gz").read_bytes()


def test_known_older_archive_is_verified(tmp_path):
    (tmp_path / "caltech101").mkdir()
    bad = tmp_path / "caltech101" / "101_ObjectCategories.tar.gz"
    bad.write_bytes(b"not the official archive")
    state, why = dl.status("caltech101", tmp_path)
    assert state == "corrupt" and str(bad) in why and "b224c7392d521a49829488ab0f1120d9" in why


def test_missing_data_through_asymbp_run(tmp_path, capsys):
    assert main(["run", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "asymbp datasets download cifar10" in err and str(tmp_path) in err


def test_corrupt_file_already_there(tmp_path, monkeypatch, pin, write_mnist):
    data = tmp_path / "data"
    write_mnist(data / "mnist")
    pin(monkeypatch, "mnist", data / "mnist")
    p = data / "mnist" / "train-labels-idx1-ubyte.gz"
    assert dl.status("mnist", data)[0] == "ready"
    p.write_bytes(p.read_bytes()[:-3])  # truncated on disk
    state, why = dl.status("mnist", data)
    assert state == "corrupt" and str(p) in why
    with pytest.raises(AsymbpError, match="train-labels-idx1-ubyte.gz.*does not match"):
        dl.download("mnist", data, mirror="http://127.0.0.1:9", progress=False, log=lambda *_: None)


def test_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(AsymbpError) as err:
        dl.download("svhn", tmp_path, mirror="http://127.0.0.1:9", progress=False, log=lambda *_: None)
    assert "127.0.0.1:9/svhn/train_32x32.mat" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["icub", "pubfig83-id", "sufrw-id", "timit80"])
def test_manual_datasets_say_what_to_put_where(tmp_path, key, capsys):
    assert main(["datasets", "download", key, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be downloaded automatically" in err
    assert str(tmp_path / key) in err


def test_every_pinned_checksum_is_well_formed():
    for key, remotes in dl.SOURCES.items():
        for r in remotes:
            assert r.url.startswith("http") and r.name == r.url.rsplit("/", 1)[1]
            if r.md5:
                assert len(r.md5) == 32 and int(r.md5, 16) >= 0 and r.pin
            if r.sha256:
                assert len(r.sha256) == 64 and r.pin


def test_datasets_table(tmp_path, capsys, monkeypatch, write_mnist):
    write_mnist(tmp_path / "mnist", gz=False)  # gunzipped: no pinned checksum to compare
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    from asymbp.data import DATASETS
    from asymbp.paper import PAPER_DATASETS

    for name, key in PAPER_DATASETS.items():
        assert key in rows and name in rows[key]
    assert " ready " in rows["mnist"] and " corrupt " in rows["cifar10"]
    assert " missing " in rows["svhn"] and " ready " in rows["mnist5k"]
    assert "30/class" in rows["caltech101"] and " large " in rows["caltech101"]
    assert "[manual]" in rows["timit80"] and " mlp " in rows["timit80"]
    assert str(tmp_path) in out
    assert set(PAPER_DATASETS.values()) <= set(DATASETS)


def test_status_follows_the_sources_not_the_cache(tmp_path, write_mnist):
    write_mnist(tmp_path / "mnist", gz=False)
    load("mnist", tmp_path)
    assert dl.status("mnist", tmp_path) == ("ready", "source files present, preprocessed cache built")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    state, why = dl.status("mnist", tmp_path)
    assert state == "missing" and "t10k-labels-idx1-ubyte.gz" in why


def test_npz_key_has_nothing_to_download(tmp_path):
    with pytest.raises(AsymbpError, match="nothing to download"):
        dl.download(f"npz:{tmp_path / 'x.npz'}", tmp_path)
