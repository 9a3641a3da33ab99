"""metrics.layer_alignment against angles and norms computed by hand in NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asymbp import AsymConv2d, AsymLinear
from asymbp.metrics import layer_alignment


def _np_angle(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_pfa_layer_alignment_is_path_alignment(kind, density):
    """For PFA the V–W angle and norm ratio are Li & Benna's path alignment, the angle between W
    and the product B·R, and ‖B·R‖/‖W‖: checked on a layer whose W, B and R are set by hand."""
    torch.manual_seed(0)
    if kind == "linear":
        layer = AsymLinear(5, 3, scheme="PFA", seed=1, alpha=2, density=density,
                           dtype=torch.float64)
    else:
        layer = AsymConv2d(2, 3, 3, scheme="PFA", seed=1, alpha=2, density=density,
                           dtype=torch.float64)
    rng = np.random.default_rng(0)
    W = rng.normal(size=tuple(layer.weight.shape))
    B = rng.normal(size=(3, 6)) * (rng.random((3, 6)) < density)  # (N_out, αN_out), sparse
    R = rng.normal(size=(6, *W.shape[1:]))  # (αN_out, C_in·k·k) as a kernel
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.feedback.B.copy_(torch.from_numpy(B))
        layer.feedback.R.copy_(torch.from_numpy(R))
    BR = (B @ R.reshape(6, -1)).reshape(W.shape)  # the product path B·R, in W's shape
    (row,) = layer_alignment(layer)
    assert row["scheme"] == "PFA"
    assert row["angle"] == pytest.approx(_np_angle(BR, W), abs=1e-9)
    assert row["norm_ratio"] == pytest.approx(np.linalg.norm(BR) / np.linalg.norm(W), rel=1e-12)
    assert row["sign_concordance"] == pytest.approx(np.mean((BR >= 0) == (W >= 0)))
    # Aligned by hand: B·R = 2W gives 0° and ratio 2.
    with torch.no_grad():
        layer.feedback.B.copy_(torch.eye(3, 6, dtype=torch.float64))
        R2 = np.zeros_like(R)
        R2[:3] = 2 * W
        layer.feedback.R.copy_(torch.from_numpy(R2))
    (row,) = layer_alignment(layer)
    assert row["angle"] == pytest.approx(0.0, abs=1e-5) and row["norm_ratio"] == pytest.approx(2.0)
