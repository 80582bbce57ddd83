"""canonical_json: its orjson fast path gives RFC 8785 bytes exactly, and what it cannot take goes to rfc8785."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InvalidMessage
from protocol.messages import _orjson_is_canonical, canonical_json

# every JSON value Python's json module yields, floats excepted: any text (control characters, non-ASCII, astral
# characters), any member names, integers on both sides of 2**53
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def _reference(value: Any) -> bytes | None:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError, OverflowError):
        return None


@settings(max_examples=500)
@given(values)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(InvalidMessage):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": '\u0000\u001f\u007f\b\f\n\r\t"\\/\u2028\u2029é😀'},  # escapes and raw UTF-8 as RFC 8785 says
        {"z": [True, False, None, -(2**53) + 1, 2**53 - 1]},
        {"aa": 1, "a": 2, "A": 3, "_": 4, "~": 5},
    ],
)
def test_fast_path_cases(value: Any) -> None:
    assert _orjson_is_canonical(value)
    assert canonical_json(value) == bytes(rfc8785.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        {"\u00e9": 1, "z": 2},  # non-ASCII member names: UTF-16 order is rfc8785's to decide
        {"n": 2**53},  # beyond exact integers: refused by rfc8785
        {"f": 1.5},  # floats: ECMAScript number formatting is rfc8785's
        ("a", "tuple"),
    ],
)
def test_what_the_fast_path_leaves_to_rfc8785(value: Any) -> None:
    assert not _orjson_is_canonical(value)


def test_a_lone_surrogate_is_a_typed_refusal() -> None:
    with pytest.raises(InvalidMessage, match="RFC 8785"):
        canonical_json({"a": "\ud800"})
