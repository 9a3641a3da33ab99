"""Cost of DFA and weight mirrors (WM) per training step, relative to plain nn layers.

`step_time.py` times the training step of every scheme; for WM, `train()` also runs
`mirror_every`/`mirror_steps` mirror steps (default: one per training step), which this adds.
CPU time of this process (`time.process_time`) on one thread, so other load on a shared machine
distorts it less than wall-clock; interleaved with the plain step, median ratio over repeats.

    python benchmarks/mirror_step_time.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_time as st  # noqa: E402

import asymbp  # noqa: E402
from asymbp.feedback import mirror_step  # noqa: E402


def cpu_time(step, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - t) / n


def main() -> int:
    torch.set_num_threads(1)
    for net, n in (("mnist", 4), ("cifar", 2)):
        c, size = st.SHAPES[net]
        torch.manual_seed(0)
        plain = asymbp.models.build(net, 10)
        x, y = torch.randn(100, c, size, size), torch.randint(0, 10, (100,))
        steps = {s: st.make_step(asymbp.convert(copy.deepcopy(plain), s, seed=1), x, y)
                 for s in ("RndF", "DFA", "WM")}
        wm = asymbp.convert(copy.deepcopy(plain), "WM", seed=1)
        wm_step = st.make_step(wm, x, y)
        steps["WM+1 mirror"] = lambda: (wm_step(), mirror_step(wm, 1))
        plain_step = st.make_step(plain, x, y)
        for f in (plain_step, *steps.values()):
            f()
        ratios, plain_t = {k: [] for k in steps}, []
        for _ in range(5):
            for k, f in steps.items():
                tp = cpu_time(plain_step, n)
                ratios[k].append(cpu_time(f, n) / tp)
                plain_t.append(tp)
        print(f"{net}: plain {statistics.median(plain_t) * 1e3:.0f} ms CPU/step; "
              + "; ".join(f"{k} {statistics.median(v):.3f}x" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
