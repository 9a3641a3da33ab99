import os
import sys

# Tests import helpers from sibling test modules (e.g. `from test_layers import SCHEMES`).
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "2")
