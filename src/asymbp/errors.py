"""User-facing errors.

Every mistake a user can make (an unknown method, a bad option, a missing file) raises
`AsymbpError`, a `ValueError` whose message is one line: what was wrong, what is valid, what to
do. The command line prints that line and exits with status 2; library users catch `ValueError`.
"""

from __future__ import annotations

from typing import Iterable


class AsymbpError(ValueError):
    """A mistake in what the user asked for; the message is one line meant for them."""


def unknown(kind: str, value: object, valid: Iterable[str], hint: str = "") -> AsymbpError:
    """An `AsymbpError` for an unknown name, listing the valid ones."""
    listed = ", ".join(str(v) for v in valid)
    message = f"unknown {kind} {value!r}; valid: {listed}"
    if hint:
        message += f" ({hint})"
    return AsymbpError(message)
