"""Server frame headers: the three length encodings of RFC 6455 §5.2."""

from __future__ import annotations

import pytest

from core.protocol import frame_header


@pytest.mark.parametrize("n", [0, 125])
def test_short_lengths_fit_in_the_second_byte(n: int) -> None:
    header = frame_header(0x1, n)
    assert header == bytes([0x81, n])


@pytest.mark.parametrize("n", [126, 65535])
def test_medium_lengths_take_two_extra_bytes(n: int) -> None:
    header = frame_header(0x1, n)
    assert header[:2] == bytes([0x81, 126]) and len(header) == 4
    assert int.from_bytes(header[2:4], "big") == n


@pytest.mark.parametrize("n", [65536, 1 << 20])
def test_long_lengths_take_eight_extra_bytes(n: int) -> None:
    header = frame_header(0x1, n)
    assert header[:2] == bytes([0x81, 127]) and len(header) == 10
    assert int.from_bytes(header[2:10], "big") == n


def test_the_opcode_goes_in_the_first_byte_with_fin_set() -> None:
    assert frame_header(0x2, 3)[0] == 0x82
