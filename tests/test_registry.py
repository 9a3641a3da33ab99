"""The one registry helper: case-insensitive lookup, aliases, the one-line error, order."""

import pytest

from asymbp.errors import AsymbpError
from asymbp.registry import Registry


def test_lookup_is_case_insensitive_with_aliases_and_lists_valid_names():
    reg = Registry("colour", hint="or give a hex code")
    reg.register("Red", 1)

    @reg.register("Blue", aliases=("navy",))
    def blue():
        return 2

    assert reg["red"] == reg["RED"] == 1 and reg["NAVY"] is blue and reg.canonical("navy") == "Blue"
    assert "rEd" in reg and "green" not in reg and 3 not in reg
    assert list(reg) == ["Red", "Blue"] and len(reg) == 2
    with pytest.raises(AsymbpError, match=r"^unknown colour 'green'; valid: Red, Blue \(or give"):
        reg["green"]
    with pytest.raises(AsymbpError, match="already registered"):
        reg.register("red", 3)
    reg.reorder(lambda name: name)
    assert list(reg) == ["Blue", "Red"]
