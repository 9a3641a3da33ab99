"""Per-layer random number generators, shared by every feedback scheme (DESIGN §2).

Each asymmetric layer has its own seed (set by `asymbp.convert` from one model seed). Fixed draws
(frSF's M, RndF's V, PFA's B and R, DFA's B, a learned V's start) come once from
`cpu_generator(seed)`, so they are the same on every device and in every process. Draws repeated
during training (brSF's M after every update of W, WM's mirror noise) come from a
`LayerGenerator`: a generator on W's device, made on first use, whose state is saved with the
model, so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (any int: it is reduced to the generator's range)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) % (2**63))
    return g


class LayerGenerator:
    """A generator on the device of the tensors it draws for, seeded from `seed`.

    `on(device)` makes it on first use, from `seed` or from the state restored by `set_state`
    (a checkpoint's), which it then consumes; moving to another device starts again from `seed`.
    """

    def __init__(self, seed: int):
        self.seed = int(seed) % (2**63)
        self._gen: torch.Generator | None = None
        self._restored: Tensor | None = None  # applied when the generator is made

    def on(self, device) -> torch.Generator:
        if self._gen is None or self._gen.device != torch.device(device):
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._restored is not None:
                gen.set_state(self._restored)
                self._restored = None
            self._gen = gen
        return self._gen

    def get_state(self) -> Tensor | None:
        """The state to save (None before the first draw and with nothing restored)."""
        return self._gen.get_state() if self._gen is not None else self._restored

    def set_state(self, state: Tensor | None) -> None:
        """Continue from a saved state at the next `on(device)`."""
        self._restored = state
        self._gen = None
