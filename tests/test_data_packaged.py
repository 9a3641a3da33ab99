"""The datasets that install with the package load real data; the registry is consistent."""

from __future__ import annotations

import numpy as np
import pytest

from asymbp.data import DATASETS, check_key, load
from asymbp.errors import AsymbpError


@pytest.mark.parametrize("key, shape, model", [("mnist5k", (1, 28, 28), "mnist"),
                                               ("mnist1d", (40,), "mlp")])
def test_packaged_real_data(key, shape, model):
    ds = load(key)
    assert ds.input_shape == shape and ds.model == model and ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_test)) == (4000, 1000)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=10)
        assert counts.min() >= 0.8 * len(y) / 10 and counts.max() <= 1.2 * len(y) / 10  # balanced
    assert np.isfinite(ds.x_train).all() and ds.x_train.std() > 0
    if key == "mnist5k":  # real digits: [0, 1] pixels, mostly background
        assert ds.x_train.min() == 0 and ds.x_train.max() <= 1 and (ds.x_train == 0).mean() > 0.5


def test_registry_has_the_papers_15_with_their_networks():
    from asymbp.paper import PAPER_DATASETS

    networks = {"mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar", "svhn": "svhn",
                "timit80": "mlp"}
    assert list(DATASETS)[:15] == list(PAPER_DATASETS.values())
    for key in PAPER_DATASETS.values():
        info = DATASETS[key]
        assert info.model == networks.get(key, "large") and info.files and info.check
        check_key(key)


def test_unknown_key():
    with pytest.raises(AsymbpError, match="unknown dataset 'mnsit'.*mnist"):
        check_key("mnsit")


@pytest.mark.parametrize("key", ["mnist5k", "mnist1d"])
def test_packaged_data_come_back_from_the_cache_unchanged(key, tmp_path):
    built = load(key, tmp_path)  # parsed (mnist5k) or generated (mnist1d), then cached
    assert list((tmp_path / key).glob(".asymbp-*.npz"))
    again = load(key, tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(built, name), getattr(again, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    blocked = tmp_path / "file"
    blocked.write_text("")  # a data root that cannot hold a cache folder still loads
    assert np.array_equal(load(key, blocked).x_test, built.x_test)
