"""Values in the journal: framing, codecs, and fingerprints that are canonical and fast."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transparent_de import _serialization as S

flat = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)


@given(
    args=st.lists(flat, max_size=5).map(tuple), kwargs=st.dictionaries(st.text(max_size=5), flat, max_size=4)
)
def test_flat_arguments_take_the_fast_path_and_ignore_keyword_order(args, kwargs):
    assert S._fast_call_args((args, kwargs)) is not None
    reordered = dict(reversed(list(kwargs.items())))
    assert S.fingerprint((args, kwargs)) == S.fingerprint((args, reordered))


def test_nested_values_take_the_general_walk():
    assert S._fast_call_args(((1, [2]), {})) is None
    assert S._fast_call_args(((1,), {"k": (2,)})) is None


@pytest.mark.parametrize(
    "value",
    [
        "((1, 'a', b'x', 2.5, None, True), {'k': 'v', 'j': 3})",
        "(({'b': {3, 1, 2}, 'a': frozenset({'x', 'y'})},), {})",
    ],
)
def test_fingerprint_is_stable_across_processes_and_hash_seeds(value):
    code = f"from transparent_de._serialization import fingerprint; print(fingerprint({value}))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1


def test_fingerprint_ignores_dict_and_set_order():
    a = {"x": 1, "y": {3, 2, 1}}
    b = {"y": {1, 2, 3}, "x": 1}
    assert S.fingerprint(((a,), {})) == S.fingerprint(((b,), {}))
    assert S.fingerprint(((1,), {"a": 1, "b": 2})) == S.fingerprint(((1,), {"b": 2, "a": 1}))
    assert S.fingerprint(((1,), {})) != S.fingerprint(((2,), {}))


def test_frame_round_trip_and_codec():
    blob = S.encode({"a": 1})
    assert S.codec_of(blob) == "pickle" and S.decode(blob) == {"a": 1}
    lam = S.encode(lambda x: x + 1)  # only dill can carry a lambda
    assert S.codec_of(lam) == "dill" and S.decode(lam)(1) == 2
