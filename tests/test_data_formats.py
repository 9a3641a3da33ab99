"""Every dataset format, written in its real on-disk format to a temporary folder and loaded
through `asymbp.data.load`, the path users hit; plus the cache and bad input.

The writers of each format are conftest.py's fixtures (the other test_data_* modules use them too).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from asymbp.data import DATASETS, load
from asymbp.errors import AsymbpError

RNG = np.random.default_rng(0)


# --- each format through load() ---------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz, write_mnist):
    d = write_mnist(tmp_path / "mnist", gz=gz)
    ds = load("mnist", tmp_path)
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, d["train"][0], atol=1e-3)
    np.testing.assert_array_equal(ds.y_test, d["test"][1])
    assert (ds.num_classes, ds.model) == (10, "mnist")


@pytest.mark.parametrize("hundred", [False, True])
@pytest.mark.parametrize("packed", [True, False])
def test_cifar_pickles(tmp_path, hundred, packed, write_cifar):
    key = "cifar100" if hundred else "cifar10"
    d = write_cifar(tmp_path / key, hundred, packed)
    ds = load(key, tmp_path)
    n_train = 20 if hundred else 100
    assert ds.x_train.shape == (n_train, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    first = "train" if hundred else "data_batch_1"
    np.testing.assert_allclose(ds.x_train[0].reshape(-1) * 255, d[first][0][0], atol=1e-3)
    assert list(ds.y_train[:20]) == list(d[first][1])
    assert (ds.num_classes, ds.model) == ((100, "cifar") if hundred else (10, "cifar"))


def test_svhn_mat(tmp_path, write_svhn):
    d = write_svhn(tmp_path / "svhn")
    ds = load("svhn", tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.model == "svhn"
    np.testing.assert_allclose(ds.x_test[5] * 255, d["test"][0][..., 5].transpose(2, 0, 1), atol=1e-3)
    assert ds.y_train[9] == 0 and ds.y_train[0] == 1  # label 10 is the digit 0


def test_stl10_binary(tmp_path, write_stl10):
    d = write_stl10(tmp_path / "stl10")
    ds = load("stl10", tmp_path)
    assert ds.x_train.shape == (12, 3, 119, 119) and ds.model == "large"
    assert list(ds.y_train[:3]) == [0, 1, 2]
    # The column-major storage is undone: resizing the original image gives the loaded one.
    ref = np.asarray(Image.fromarray(d["train"][0].transpose(1, 2, 0)).resize((119, 119), Image.BILINEAR))
    np.testing.assert_allclose(ds.x_train[0] * 255, ref.transpose(2, 0, 1), atol=1e-3)
    assert not (tmp_path / "stl10" / "stl10_binary" / "unlabeled_X.bin").exists()  # not unpacked


@pytest.mark.parametrize("packed", [True, False])
def test_flowers102_split_files(tmp_path, packed, write_flowers102):
    d = write_flowers102(tmp_path / "flowers102", packed=packed)
    ds = load("flowers102", tmp_path)
    assert len(ds.y_train) == len(d["trn"]) + len(d["val"]) and len(ds.y_test) == len(d["tst"])
    assert ds.x_train.shape[1:] == (3, 119, 119) and ds.num_classes == 102
    ids = np.sort(np.concatenate([d["trn"], d["val"]]))
    np.testing.assert_array_equal(ds.y_train, d["labels"][ids - 1] - 1)


def test_flowers17_split_files(tmp_path, write_flowers17):
    d = write_flowers17(tmp_path / "flowers17")
    ds = load("flowers17", tmp_path)
    assert len(ds.y_train) == len(d["trn"]) + len(d["val"]) and len(ds.y_test) == len(d["tst"])
    assert sorted(set(ds.y_train)) == [0, 1, 16] and ds.num_classes == 17


def test_image_tree_grayscale_lifted(tmp_path, write_tree):
    write_tree(tmp_path / "lfw-id" / "lfw", {f"person_{i:02d}": 15 for i in range(80)}, gray_every=1)
    ds = load("lfw-id", tmp_path)
    assert ds.x_train.shape == (800, 3, 119, 119) and ds.x_test.shape == (400, 3, 119, 119)
    assert np.array_equal(ds.x_train[:, 0], ds.x_train[:, 1])  # grayscale -> 3 equal channels


def test_icub_train_test_folders(tmp_path, write_tree):
    base = tmp_path / "icub" / "iCubWorld1.0" / "human"
    write_tree(base / "train", {c: 3 for c in ("book", "cup", "phone")}, ext=".ppm")
    write_tree(base / "test", {c: 2 for c in ("book", "cup", "phone")}, ext=".ppm")
    ds = load("icub", tmp_path)
    assert (len(ds.y_train), len(ds.y_test), ds.num_classes) == (9, 6, 3)
    assert ds.meta["classes"] == ["book", "cup", "phone"]


def test_timit_npz(tmp_path):
    (tmp_path / "timit80").mkdir()
    y = np.repeat(np.arange(81), 500)
    y[:250] = 99  # class 0 has only 250 examples left: not eligible
    x = RNG.standard_normal((len(y), 7)).astype(np.float32)
    np.savez(tmp_path / "timit80" / "timit80.npz", x=x, y=y)
    ds = load("timit80", tmp_path, seed=1)
    assert ds.x_train.shape == (32000, 7) and ds.x_test.shape == (8000, 7) and ds.model == "mlp"
    assert "0" not in ds.meta["classes"]
    assert np.bincount(ds.y_train).tolist() == [400] * 80 and np.bincount(ds.y_test).tolist() == [100] * 80


# --- the cache --------------------------------------------------------------------------------

def test_cache_hit_rebuild_and_nothing_half_written(tmp_path, monkeypatch, write_mnist):
    from asymbp.data import idx

    write_mnist(tmp_path / "mnist")
    a = load("mnist", tmp_path)
    caches = list((tmp_path / "mnist").glob(".asymbp-mnist-v*.npz"))
    assert len(caches) == 1
    assert not list((tmp_path / "mnist").glob("*.tmp"))
    calls = []
    monkeypatch.setattr(idx, "read_idx", lambda p: calls.append(p))  # a cache hit reads no IDX
    b = load("mnist", tmp_path)
    assert calls == [] and np.array_equal(a.x_train, b.x_train)
    monkeypatch.undo()
    # A changed source file invalidates the cache.
    time.sleep(0.01)
    write_mnist(tmp_path / "mnist")
    c = load("mnist", tmp_path)
    assert not np.array_equal(a.x_train, c.x_train)


def test_failed_build_leaves_no_cache(tmp_path, write_mnist):
    write_mnist(tmp_path / "mnist")
    p = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-8])  # truncated gzip
    with pytest.raises(AsymbpError):
        load("mnist", tmp_path)
    assert [f.name for f in (tmp_path / "mnist").iterdir() if f.name.startswith(".")] == []


# --- bad input: one line naming the file and what to do ---------------------------------------

def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("key", [k for k, i in DATASETS.items() if not i.packaged])
def test_missing_directory(tmp_path, key):
    with pytest.raises(AsymbpError) as err:
        load(key, tmp_path)
    msg = one_line(err)
    assert str(tmp_path / key) in msg and ("put " in msg or "download" in msg)


def test_wrong_files(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(b"x")
    with pytest.raises(AsymbpError) as err:
        load("mnist", tmp_path)
    msg = one_line(err)
    assert "train-images-idx3-ubyte.gz" in msg and "asymbp datasets download mnist" in msg


def test_bad_idx_header(tmp_path, write_mnist):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(AsymbpError) as err:
        load("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in one_line(err) and "IDX" in str(err.value)


def test_corrupt_archive(tmp_path, write_cifar):
    write_cifar(tmp_path / "cifar10")
    arch = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    arch.write_bytes(arch.read_bytes()[: arch.stat().st_size // 2])
    with pytest.raises(AsymbpError) as err:
        load("cifar10", tmp_path)
    msg = one_line(err)
    assert str(arch) in msg and "corrupt or truncated" in msg
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()
    assert not [p for p in (tmp_path / "cifar10").iterdir() if p.name.startswith(".unpack")]


def test_corrupt_pickle(tmp_path, write_cifar):
    write_cifar(tmp_path / "cifar10", packed=False)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(AsymbpError) as err:
        load("cifar10", tmp_path)
    assert "data_batch_3" in one_line(err)


def test_image_that_will_not_decode(tmp_path, write_tree):
    write_tree(tmp_path / "lfw-id" / "lfw", {f"p{i:02d}": 15 for i in range(80)})
    bad = tmp_path / "lfw-id" / "lfw" / "p07" / "p07_0001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(AsymbpError) as err:
        load("lfw-id", tmp_path)
    msg = one_line(err)
    assert str(bad) in msg and "will not decode" in msg
    assert not list((tmp_path / "lfw-id").glob(".asymbp-*"))


def test_npz_wrong_keys(tmp_path):
    (tmp_path / "timit80").mkdir()
    np.savez(tmp_path / "timit80" / "timit80.npz", features=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(AsymbpError) as err:
        load("timit80", tmp_path)
    assert "timit80.npz" in one_line(err) and "features, labels" in str(err.value)
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)))
    with pytest.raises(AsymbpError) as err:
        load(f"npz:{tmp_path / 'd.npz'}")
    assert "x_train" in one_line(err)


def test_svhn_wrong_mat(tmp_path):
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"images": np.zeros(3)})
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"images": np.zeros(3)})
    with pytest.raises(AsymbpError) as err:
        load("svhn", tmp_path)
    assert "train_32x32.mat" in one_line(err)


def test_nested_official_archive_caltech101_zip(tmp_path, tar_folder, write_tree):
    """caltech-101.zip (data.caltech.edu) holds caltech-101/101_ObjectCategories.tar.gz: both
    layers are unpacked, by the same function the Caltech-101 loader calls."""
    import zipfile

    from asymbp.data.folders import CALTECH101
    from asymbp.data._archive import unpacked

    src = tmp_path / "src"
    write_tree(src / "101_ObjectCategories", {"accordion": 2, "BACKGROUND_Google": 2})
    tar_folder(src / "101_ObjectCategories.tar.gz", src / "101_ObjectCategories", "101_ObjectCategories")
    root = tmp_path / "caltech101"
    root.mkdir()
    with zipfile.ZipFile(root / "caltech-101.zip", "w") as z:
        z.write(src / "101_ObjectCategories.tar.gz", "caltech-101/101_ObjectCategories.tar.gz")
    base = unpacked(root, CALTECH101.marker, list(CALTECH101.archives), "caltech101", "hint")
    assert base == root / "caltech-101" / "101_ObjectCategories"
    assert sorted(p.name for p in base.iterdir()) == ["BACKGROUND_Google", "accordion"]
    assert len(list((base / "accordion").iterdir())) == 2


# --- the package itself ----------------------------------------------------------------------

def test_import_asymbp_data_does_not_import_pandas():
    """The paper's dataset order comes from `asymbp.paper`, whose pandas is imported lazily:
    a worker that only loads data never pays for it."""
    code = "import sys, asymbp.data; print('pandas' in sys.modules, list(asymbp.data.DATASETS)[0])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "mnist"]


def test_dataset_keys_match_case_insensitively_like_every_registry(tmp_path, write_mnist):
    from asymbp.data import check_key

    write_mnist(tmp_path / "mnist")
    assert check_key("MNIST") == "mnist" and DATASETS["Mnist"].key == "mnist"
    assert load("MNIST", tmp_path).key == "mnist"  # the folder of the registered key
    assert check_key("npz:/Some/Path.npz") == "npz:/Some/Path.npz"  # a path keeps its case
    with pytest.raises(AsymbpError, match=r"unknown dataset 'mnsit'; valid: mnist, .*npz:PATH"):
        check_key("mnsit")
