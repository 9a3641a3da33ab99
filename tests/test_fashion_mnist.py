"""Fashion-MNIST: MNIST's IDX format under its own key, downloaded from a local HTTP server on
127.0.0.1 (the mirror mechanism, `<mirror>/fashion-mnist/<file>`) and verified against pinned
MD5s; the official pins are checked against their published values."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from asymbp.cli import main
from asymbp.data import DATASETS, load
from asymbp.data import download as dl
from asymbp.errors import AsymbpError

KEY = "fashion-mnist"
QUIET = dict(progress=False, log=lambda *_: None)

# torchvision/datasets/mnist.py, FashionMNIST.resources; the zalandoresearch/fashion-mnist README
PUBLISHED = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def test_download_verify_and_load(write_mnist, pin, served_ranges, tmp_path, server, monkeypatch):
    mirror, url = server
    written = write_mnist(mirror / KEY)  # small files in the real IDX format, gzipped
    pin(monkeypatch, KEY, mirror / KEY)  # their MD5s in place of the official ones
    data = tmp_path / "data"
    paths = dl.download(KEY, data, mirror=url, **QUIET)
    assert sorted(p.name for p in paths) == sorted(PUBLISHED)
    for p in paths:
        assert p.parent == data / KEY and p.read_bytes() == (mirror / KEY / p.name).read_bytes()
    assert dl.status(KEY, data)[0] == "ready"
    ds = load(KEY, data)
    assert ds.key == KEY and ds.num_classes == 10 and ds.model == "mnist"
    for split in ("train", "test"):
        x, y = written[split]
        np.testing.assert_array_equal(getattr(ds, f"y_{split}"), y)
        np.testing.assert_allclose(getattr(ds, f"x_{split}")[:, 0], x / 255, rtol=1e-6)
    served_ranges.clear()
    dl.download(KEY, data, mirror=url, **QUIET)  # verified already: nothing fetched
    assert served_ranges == []


def test_the_official_checksums_are_pinned():
    remotes = dl.SOURCES[KEY]
    assert {r.name: r.md5 for r in remotes} == PUBLISHED
    for r in remotes:
        assert r.url == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + r.name
        assert "FashionMNIST" in r.pin and r.sha256 is None


def test_a_file_that_is_not_the_official_one_is_refused(write_mnist, tmp_path, server):
    mirror, url = server
    write_mnist(mirror / KEY)  # not Zalando's files: the official MD5s do not match
    with pytest.raises(AsymbpError) as err:
        dl.download(KEY, tmp_path, mirror=url, **QUIET)
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg
    assert PUBLISHED["train-images-idx3-ubyte.gz"] in msg and "does not match" in msg
    assert not list((tmp_path / KEY).glob("*.gz*"))  # neither the file nor its .part kept


def test_missing_and_corrupt_files_name_fashion_mnist(write_mnist, tmp_path):
    with pytest.raises(AsymbpError) as err:
        load(KEY, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / KEY) in msg
    assert "asymbp datasets download fashion-mnist" in msg and "Fashion-MNIST" in msg
    write_mnist(tmp_path / KEY)
    (tmp_path / KEY / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(AsymbpError) as err:
        load(KEY, tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "download fashion-mnist" in msg
    assert "download mnist'" not in msg


def test_listed_by_asymbp_datasets(write_mnist, tmp_path, capsys):
    assert DATASETS[KEY].name == "Fashion-MNIST" and DATASETS[KEY].classes == 10
    write_mnist(tmp_path / KEY, gz=False)  # gunzipped files: no pinned checksum to compare
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert KEY in rows and " ready " in rows[KEY]
