"""The two ways a dataset on disk can be wrong, told apart so `asymbp datasets` can say which."""

from __future__ import annotations

from ..errors import AsymbpError


class MissingData(AsymbpError):
    """A dataset's files are not where they should be (status `missing`)."""


class CorruptData(AsymbpError):
    """A dataset's files are there but unreadable: truncated, wrong checksum, bad format
    (status `corrupt`)."""
