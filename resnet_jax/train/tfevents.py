"""A TensorBoard event file for scalars, written without TensorFlow, tensorboardX or torch.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecords (length, masked CRC-32C of
the length, an ``Event`` protocol buffer, masked CRC-32C of the data) whose first event
names the file version and whose others carry ``Summary`` values. Only the fields a
scalar needs are encoded here, by hand, so the training command starts without
importing a protobuf or tensor library (tensorboardX imports torch when it is
installed, which would delay every start).
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecords."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 fields: two's complement, as protobuf encodes them
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


SESSION_START = 1  # SessionLog.START


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None, session_status: int | None = None) -> bytes:
    """An ``Event`` message: wall_time (1, double), step (2, int64), file_version (3),
    summary (5) holding one ``Summary.Value`` (tag 1, simple_value 2) per scalar,
    session_log (7) holding a status (1)."""
    out = _field(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _field(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if session_status is not None:
        out += _bytes_field(7, _field(1, 0) + _varint(int(session_status)))
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items())
        out += _bytes_field(5, summary)
    return out


def encode_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


class ScalarWriter:
    """``add_scalar(tag, value, step)`` into a new event file in ``logdir``."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = open(self.path, "ab")
        self._file.write(encode_record(encode_event(now, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        event = encode_event(time.time(), step, scalars={tag: float(value)})
        self._file.write(encode_record(event))

    def restart_at(self, step: int) -> None:
        """A ``SessionLog.START`` at ``step``: TensorBoard drops what earlier files of the run
        logged at ``step`` and after (a resumed run logs those steps again)."""
        self._file.write(encode_record(encode_event(time.time(), step, session_status=SESSION_START)))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
