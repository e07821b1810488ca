"""The TensorBoard event writer against tensorboardX's protocol buffers and checksums."""

from __future__ import annotations

import struct

import numpy as np
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c as reference_masked_crc

from resnet_jax.train import tfevents


def read_events(path):
    data = path.read_bytes()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", data[pos + 8:pos + 12])
        payload = data[pos + 12:pos + 12 + length]
        (crc_data,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert crc_len == reference_masked_crc(header)
        assert crc_data == reference_masked_crc(payload)
        events.append(event_pb2.Event.FromString(payload))
        pos += 16 + length
    return events


def test_events_are_byte_identical_to_protobufs():
    for step, scalars in [(0, None), (7, {"train/loss": 0.25}), (2**40, {"a": -1.5, "b/c": 3e9})]:
        ours = tfevents.encode_event(1234.5, step, scalars=scalars)
        ref = event_pb2.Event(wall_time=1234.5, step=step)
        if scalars:
            ref.summary.CopyFrom(summary_pb2.Summary(value=[
                summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]))
        assert ours == ref.SerializeToString()
    assert tfevents.encode_event(1.0, file_version="brain.Event:2") == \
        event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString()
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert tfevents.masked_crc32c(data) == reference_masked_crc(data)


def test_scalar_writer_file_reads_back(tmp_path):
    w = tfevents.ScalarWriter(tmp_path / "tb")
    want = [("train/loss", 2.5 - 0.1 * s, s) for s in range(1, 30)] + [("val/accuracy", 0.9, 29)]
    for tag, value, step in want:
        w.add_scalar(tag, value, step)
    w.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    got = [(e.summary.value[0].tag, e.summary.value[0].simple_value, e.step) for e in events[1:]]
    assert [(t, s) for t, _, s in got] == [(t, s) for t, _, s in want]
    np.testing.assert_allclose([v for _, v, _ in got], [v for _, v, _ in want], rtol=1e-7)
