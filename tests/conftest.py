import os
import sys

import pytest
import torch

# Tests import helpers from sibling test modules (e.g. `from test_layers import SCHEMES`).
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (much faster than two on a loaded
    machine); the previous setting comes back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
