"""The paper's protocols (DESIGN §7): per-class counts, disjoint splits, seed-determined samples."""

from __future__ import annotations

import numpy as np
import pytest

from asymbp.data import load
from asymbp.data._common import per_class_split
from asymbp.data.folders import PUBFIG83


@pytest.fixture(autouse=True)
def small_images(monkeypatch):
    """Protocols are about which files go where: decode to 8×8 instead of 119×119 to stay fast
    (the 119×119 resize itself is tested in test_data_formats)."""
    monkeypatch.setattr("asymbp.data.folders.LARGE_SIZE", 8)


def sample(tmp_path, key, seed):
    """(train files, test files, dataset) of `key` under tmp_path for `seed` (the sampled file
    lists are kept in the cache next to the images)."""
    ds = load(key, tmp_path, seed=seed)
    cache = next((tmp_path / key).glob(f".asymbp-{key}-s{seed}-v*.npz"))
    with np.load(cache) as f:
        return list(f["train_files"]), list(f["test_files"]), ds


def assert_protocol(ds, train, test, n_classes, n_train, n_test):
    assert ds.num_classes == n_classes == len(ds.meta["classes"])
    assert np.bincount(ds.y_train, minlength=n_classes).tolist() == [n_train] * n_classes
    assert np.bincount(ds.y_test, minlength=n_classes).tolist() == [n_test] * n_classes
    assert not set(train) & set(test)  # no image in both train and test
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    # Each label names the class folder its image came from.
    classes = ds.meta["classes"]
    for f, y in zip(train + test, np.concatenate([ds.y_train, ds.y_test])):
        assert f"/{classes[y]}/" in f"/{f}"


@pytest.fixture(scope="module")
def lfw_root(tmp_path_factory, write_tree):
    """84 identities with 15..17 images, plus 6 with fewer than 15 (never eligible)."""
    root = tmp_path_factory.mktemp("data")
    counts = {f"id_{i:02d}": 15 + i % 3 for i in range(84)} | {f"few_{i}": 14 for i in range(6)}
    write_tree(root / "lfw-id" / "lfw", counts)
    return root


def test_lfw_id_protocol_and_seeds(lfw_root):
    tr0, te0, ds0 = sample(lfw_root, "lfw-id", 0)
    assert_protocol(ds0, tr0, te0, 80, 10, 5)
    assert not any(c.startswith("few_") for c in ds0.meta["classes"])
    tr0b, te0b, ds0b = sample(lfw_root, "lfw-id", 0)
    assert (tr0b, te0b) == (tr0, te0) and ds0b.meta == ds0.meta  # same seed, same sample
    np.testing.assert_array_equal(ds0b.x_train, ds0.x_train)
    tr1, te1, ds1 = sample(lfw_root, "lfw-id", 1)
    assert_protocol(ds1, tr1, te1, 80, 10, 5)
    assert ds1.meta["classes"] != ds0.meta["classes"] and tr1 != tr0  # different seed, different
    assert ds1.meta["sample_sha1"] != ds0.meta["sample_sha1"]


def test_caltech101_all_102_classes_30_10(tmp_path, write_tree):
    counts = {f"class_{i:03d}": 41 for i in range(100)} | {"BACKGROUND_Google": 45, "inline_skate": 0}
    counts = {k: v for k, v in counts.items() if v}
    counts["inline_skate"] = 31  # Caltech-101's smallest class: 30 train, 1 test
    write_tree(tmp_path / "caltech101" / "101_ObjectCategories", counts, gray_every=7)
    tr, te, ds = sample(tmp_path, "caltech101", 3)
    assert ds.num_classes == 102 and "BACKGROUND_Google" in ds.meta["classes"]
    assert np.bincount(ds.y_train).tolist() == [30] * 102
    small = ds.meta["classes"].index("inline_skate")
    assert np.bincount(ds.y_test, minlength=102).tolist() == [1 if c == small else 10 for c in range(102)]
    assert not set(tr) & set(te)


def test_caltech256_101_samples_102_classes(tmp_path, write_tree):
    write_tree(tmp_path / "caltech256-101" / "256_ObjectCategories",
               {f"{i:03d}.thing{i}": 40 for i in range(1, 104)}, gray_every=9)
    tr, te, ds = sample(tmp_path, "caltech256-101", 0)
    assert_protocol(ds, tr, te, 102, 30, 10)
    assert len(set(ds.meta["classes"])) == 102


def test_sufrw_id_protocol(tmp_path, write_tree):
    write_tree(tmp_path / "sufrw-id" / "SUFR-W", {f"person{i}": 15 for i in range(81)})
    tr, te, ds = sample(tmp_path, "sufrw-id", 5)
    assert_protocol(ds, tr, te, 80, 10, 5)


def test_pubfig83_id_protocol():
    """80 of 83 identities, 85 / 15 each (on the file lists: 8 300 images are too many to write)."""
    groups = {f"person_{i}": [f"person_{i}/{j:03d}.jpg" for j in range(100 + i)] for i in range(83)}
    classes, train, test = per_class_split(groups, PUBFIG83.n_train, PUBFIG83.n_test, 0,
                                           n_classes=PUBFIG83.n_classes, key="pubfig83-id")
    assert len(classes) == 80
    assert np.bincount([c for _, c in train]).tolist() == [85] * 80
    assert np.bincount([c for _, c in test]).tolist() == [15] * 80
    assert not {f for f, _ in train} & {f for f, _ in test}
    again = per_class_split(groups, 85, 15, 0, n_classes=80)
    other = per_class_split(groups, 85, 15, 1, n_classes=80)
    assert again == (classes, train, test) and other != again


def test_pubfig83_id_end_to_end_small(tmp_path, write_tree):
    """The loader finds an identity-per-folder tree and applies the 85 / 15 protocol."""
    from asymbp.errors import AsymbpError

    write_tree(tmp_path / "pubfig83-id" / "pubfig83", {f"p{i}": 2 for i in range(3)})
    with pytest.raises(AsymbpError, match="only 0 classes .* at least 100"):
        load("pubfig83-id", tmp_path)


@pytest.fixture
def scene_root(tmp_path, write_tree):
    base = tmp_path / "scene67" / "Images"
    classes = ["bar", "kitchen", "office"]
    write_tree(base, {c: 100 for c in classes}, gray_every=50)
    train = [f"{c}/{c}_{i:04d}{'.jpg' if i % 3 else '.png'}" for c in classes for i in range(80)]
    test = [f"{c}/{c}_{i:04d}{'.jpg' if i % 3 else '.png'}" for c in classes for i in range(80, 100)]
    return tmp_path, train, test


def test_scene67_official_split_files(scene_root):
    root, train, test = scene_root
    (root / "scene67" / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "scene67" / "TestImages.txt").write_text("\n".join(test) + "\n")
    ds = load("scene67", root, seed=0)
    assert np.bincount(ds.y_train).tolist() == [80] * 3 and np.bincount(ds.y_test).tolist() == [20] * 3
    cache = next((root / "scene67").glob(".asymbp-scene67-v*.npz"))
    with np.load(cache) as f:
        assert [s.split("/", 1)[1] for s in f["train_files"]] == train
        assert [s.split("/", 1)[1] for s in f["test_files"]] == test
    assert load("scene67", root, seed=7).meta["sample_sha1"] == ds.meta["sample_sha1"]  # official


def test_scene67_without_split_files_samples_80_20(scene_root):
    root, _, _ = scene_root
    tr, te, ds = sample(root, "scene67", 2)
    assert_protocol(ds, tr, te, 3, 80, 20)
    tr3, _, _ = sample(root, "scene67", 3)
    assert tr3 != tr


def test_timit80_seeds(tmp_path):
    (tmp_path / "timit80").mkdir()
    y = np.repeat(np.arange(90), 500)
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2)  # every row unique
    np.savez(tmp_path / "timit80" / "timit80.npz", x=x, y=y)
    a, b, c = (load("timit80", tmp_path, seed=s) for s in (0, 0, 1))
    assert a.meta["classes"] == b.meta["classes"] != c.meta["classes"]
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not set(a.x_train[:, 0]) & set(a.x_test[:, 0])  # rows are unique: disjoint splits

