"""G.711 tables against the formulas Plivo documents for G.711 (and audioop where present)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from pipelines.audio import g711


def reference_ulaw_decode(byte: int) -> int:
    # Written out from those formulas, one code at a time.
    u = ~byte & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def reference_ulaw_encode(s: int) -> int:
    sign = 1 if s < 0 else 0
    mag = min(abs(s), 32635) + 0x84
    exp = 7
    while exp > 0 and not (mag & (1 << (exp + 7))):
        exp -= 1
    mant = (mag >> (exp + 3)) & 0x0F
    return ~((sign << 7) | (exp << 4) | mant) & 0xFF


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


def test_ulaw_decode_matches_reference_for_all_256_codes():
    table = g711.ulaw_decode(bytes(range(256)))
    assert table.dtype == np.int16
    assert [int(v) for v in table] == [reference_ulaw_decode(b) for b in range(256)]


def test_ulaw_documented_anchor_codes():
    d = g711.ULAW_DECODE
    assert (d[0xFF], d[0x7F], d[0xFE], d[0x7E], d[0x80], d[0x00]) == (0, 0, 8, -8, 32124, -32124)
    assert g711.ulaw_encode(np.zeros(160, np.int16)) == b"\xff" * 160


def test_ulaw_segment_starts():
    mags = sorted({abs(int(v)) for v in g711.ULAW_DECODE})
    starts = [0, 132, 396, 924, 1980, 4092, 8316, 16764]
    for s in starts:
        assert s in mags


def test_ulaw_encode_matches_reference_formula_on_all_inputs():
    allv = np.arange(-32768, 32768, dtype=np.int16)
    ours = np.frombuffer(g711.ulaw_encode(allv), np.uint8)
    # the scalar reference on a stride (full 65 536 would be slow in pure Python) + edges
    idx = [*range(0, 65536, 97), 0, 1, 32767, 32768, 32769, 65535]
    for i in idx:
        assert ours[i] == reference_ulaw_encode(int(allv[i])), int(allv[i])


def test_ulaw_round_trip_within_quantisation_step():
    allv = np.arange(-32768, 32768, dtype=np.int32)
    back = g711.ulaw_decode(g711.ulaw_encode(allv.astype(np.int16))).astype(np.int32)
    err = np.abs(back - np.clip(allv, -32635, 32635))
    # step size in a segment is 2^(exp+3); the decoder returns the middle of the step,
    # so the error is at most half a step (+1 for the bias rounding).
    mag = np.minimum(np.abs(allv), 32635) + 0x84
    exp = np.clip(np.floor(np.log2(mag)).astype(int) - 7, 0, 7)
    assert np.all(err <= (1 << (exp + 3)) // 2 + 1)
    # decode(encode(decode(c))) is the identity on codes (except −0 → +0)
    codes = np.arange(256, dtype=np.uint8)
    again = np.frombuffer(g711.ulaw_encode(g711.ulaw_decode(codes)), np.uint8)
    assert np.array_equal(g711.ULAW_DECODE[again], g711.ULAW_DECODE[codes])


def test_alaw_round_trip_within_quantisation_step():
    allv = np.arange(-32768, 32768, dtype=np.int32)
    back = g711.alaw_decode(g711.alaw_encode(allv.astype(np.int16))).astype(np.int32)
    err = np.abs(back - allv)
    assert err.max() <= 1024  # largest A-law step is 1024 in the top segment (half-step 512+)
    small = np.abs(allv) < 256
    assert err[small].max() <= 8


def test_cross_check_against_audioop_if_available():
    audioop = _audioop()
    if audioop is None:
        pytest.skip("audioop is not importable on this Python (removed in 3.13)")
    codes = bytes(range(256))
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(codes, 2), np.int16),
                          g711.ulaw_decode(codes))
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(codes, 2), np.int16),
                          g711.alaw_decode(codes))
    allv = np.arange(-32768, 32768, dtype=np.int16)
    a = np.frombuffer(audioop.lin2ulaw(allv.tobytes(), 2), np.uint8).astype(int)
    b = np.frombuffer(g711.ulaw_encode(allv), np.uint8).astype(int)
    diff = a != b
    # The 14-bit Sun variant differs by one step on 381 negatives.
    assert diff.sum() == 381
    assert np.all(allv[diff] < 0)
    assert np.all(np.abs(a[diff] - b[diff]) == 1)  # adjacent codes: one step apart
    assert np.array_equal(np.frombuffer(audioop.lin2alaw(allv.tobytes(), 2), np.uint8),
                          np.frombuffer(g711.alaw_encode(allv), np.uint8))


def test_encode_rejects_non_int16():
    with pytest.raises(TypeError):
        g711.ulaw_encode(np.zeros(4, np.float32))
