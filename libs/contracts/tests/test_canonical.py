"""Canonical JSON (RFC 8785): one value, one byte string, whatever the producer's key order or whitespace."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caduceus_contracts import CanonicalizationError, canonical_json

SAFE_INT = 2**53 - 1  # JCS numbers are IEEE doubles; larger integers are refused, not rounded

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INT, max_value=SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def shuffled(value, rng: random.Random):
    """The same JSON value with every object's keys in another insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


@given(json_values, st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_bytes(value, rng):
    assert canonical_json(shuffled(value, rng)) == canonical_json(value)


@given(
    json_values,
    st.one_of(st.none(), st.integers(0, 8), st.sampled_from(["\t", "  "])),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), (",\n", ":\t")]),
    st.booleans(),
    st.booleans(),
)
def test_whitespace_and_escaping_of_the_input_do_not_change_the_bytes(value, indent, separators, sort_keys, ascii):
    text = json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ascii)
    assert canonical_json(json.loads(text)) == canonical_json(value)


@given(json_values)
def test_same_value_always_gives_the_same_bytes(value):
    assert canonical_json(value) == canonical_json(json.loads(json.dumps(value)))
    assert canonical_json(value) == canonical_json(value)


def as_doubles(text: bytes):
    # JSON numbers are IEEE doubles: 1e17 is written "100000000000000000", which Python would read as an int.
    return json.loads(text, parse_int=float)


@given(json_values)
def test_canonical_bytes_parse_back_to_the_same_value(value):
    assert as_doubles(canonical_json(value)) == value


@given(json_values)
def test_canonical_form_is_a_fixed_point(value):
    once = canonical_json(value)
    assert canonical_json(as_doubles(once)) == once


@pytest.mark.parametrize("big", [2**53, 12345678901234567890, -(2**63)])
def test_integers_a_double_cannot_hold_are_refused_rather_than_rounded(big):
    # Rounding would give two different ids (say, two account numbers) one digest.
    with pytest.raises(CanonicalizationError, match="safe integer"):
        canonical_json({"account": big})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (1e-7, b"1e-7"),
        (1e-6, b"0.000001"),
        (-0.0, b"0"),
        (4.50, b"4.5"),
        (333333333.33333329, b"333333333.3333333"),
        (5e-324, b"5e-324"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        ("\u20ac$\u000f\nA'B\"\\/", b'"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\/"'),
        ("\U0001f600", "\"\U0001f600\"".encode()),
        ([None, True, False], b"[null,true,false]"),
    ],
)
def test_rfc8785_number_and_string_vectors(value, expected):
    assert canonical_json(value) == expected


def test_rfc8785_sorts_keys_by_utf16_code_units():
    # RFC 8785 section 3.2.3: the emoji (a surrogate pair, 0xD83D...) sorts before U+FB33.
    value = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}
    expected = '{"\\r":2,"1":4,"\u0080":6,"\u00f6":7,"\u20ac":1,"\U0001f600":5,"\ufb33":3}'.encode()
    assert canonical_json(value) == expected


def test_rfc8785_complete_example():
    # RFC 8785 section 3.2.4.
    source = r'''{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }'''
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_json(json.loads(source)) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"args": [1, math.nan]}, {"n": {"deep": math.inf}}])
def test_nan_and_infinity_are_refused(bad):
    with pytest.raises(CanonicalizationError, match="not canonicalizable"):
        canonical_json(bad)


@pytest.mark.parametrize("bad", [{1: "int key"}, {"s": {1, 2}}, object(), b"bytes"])
def test_values_json_cannot_express_are_refused(bad):
    with pytest.raises(CanonicalizationError):
        canonical_json(bad)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-SAFE_INT, max_value=SAFE_INT) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@given(json_values | plain_values)
def test_the_fast_path_writes_exactly_what_the_reference_implementation_writes(value):
    # canonical_json writes float-free values with the standard library; rfc8785 is the reference.
    import rfc8785

    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@pytest.mark.parametrize("bad", [{"text": "\ud800"}, {"\udc00": 1}, ["ok", "\udfff"], {"n": True, "k": {2: 1}}])
def test_unpaired_surrogates_and_non_text_keys_are_refused_on_the_fast_path_too(bad):
    with pytest.raises(CanonicalizationError):
        canonical_json(bad)
