import os
import sys

import pytest
import torch

# Tests import helpers from sibling test modules (e.g. `from test_layers import SCHEMES`).
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def keep_threads():
    """Every test gets back the torch thread count it started with: float results depend on it
    (a reduction split over threads is summed in another order), so a test that set it and
    left it would change the numbers of every test after it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (much faster than two on a loaded
    machine), and for a test whose reference must run the kernels of one-thread workers; the
    previous setting comes back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
