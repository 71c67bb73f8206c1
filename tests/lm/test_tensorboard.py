"""lm.tensorboard: event files TensorBoard can read, kept in step with metrics.jsonl."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lm import tensorboard as tb


def test_crc32c_matches_the_standard_check_value():
    assert tb.crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value
    assert tb.crc32c(b"") == 0
    c = tb.crc32c(b"abc")
    assert tb.masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _protobuf_event_class():
    """The Event message of tensorflow/core/util/event.proto (the fields written), built with the
    protobuf runtime: an independent decoder of the bytes this module encodes by hand."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="scalelab_event_test.proto", package="tbtest")
    F = descriptor_pb2.FieldDescriptorProto
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = f.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".tbtest.Value", label=F.LABEL_REPEATED)
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".tbtest.Summary",
                    label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def _records(path):
    """The raw TFRecord payloads of a file (framing only)."""
    data, i, out = path.read_bytes(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        out.append(data[i + 12:i + 12 + n])
        i += 16 + n
    return out


def test_run_events_follow_metrics_and_parse_with_protobuf(tmp_path):
    rec = [{"step": 10, "tokens": 1, "flops": 2.0, "lr": 1e-3, "train_loss": 3.25, "grad_norm": 0.5},
           {"step": 20, "tokens": 2, "flops": 4.0, "lr": 5e-4, "train_loss": 2.75, "val_loss": 2.9, "val_bpb": 4.1,
            "tokens_per_s": None}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(rec[0]) + "\n" + json.dumps(rec[1])[:15])  # the 2nd line is being written
    events = tb.RunEvents(tmp_path)
    assert events.sync() == 1
    metrics.write_text(json.dumps(rec[0]) + "\n" + json.dumps(rec[1]) + "\n")
    assert events.sync() == 1 and events.sync() == 0
    (path,) = tmp_path.glob("events.out.tfevents.*")
    read = tb.read_events(path)
    assert read[0]["file_version"] == "brain.Event:2"
    assert [e["step"] for e in read[1:]] == [10, 20]
    assert read[1]["scalars"] == {"train/loss": 3.25, "lr": np.float32(1e-3), "grad_norm": 0.5}
    assert read[2]["scalars"] == {"train/loss": 2.75, "val/loss": np.float32(2.9), "val/bpb": np.float32(4.1),
                                  "lr": np.float32(5e-4)}
    Event = _protobuf_event_class()
    parsed = [Event.FromString(r) for r in _records(path)]
    assert parsed[0].file_version == "brain.Event:2"
    assert [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in parsed[1:]] == \
        [(e["step"], e["scalars"]) for e in read[1:]]
    # a new writer (a resumed run) replaces the file with one matching metrics.jsonl
    metrics.write_text(json.dumps(rec[0]) + "\n")
    assert tb.RunEvents(tmp_path).sync() == 1
    (path2,) = tmp_path.glob("events.out.tfevents.*")
    assert [e["step"] for e in tb.read_events(path2)[1:]] == [10]


def test_damaged_event_file_is_reported(tmp_path):
    path = tmp_path / "events.out.tfevents.1.x"
    good = tb.tfrecord(tb.encode_event(1.0, 3, {"a": 1.0}))
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="bad data checksum"):
        tb.read_events(path)
    path.write_bytes(good[:-3])
    with pytest.raises(ValueError, match="truncated"):
        tb.read_events(path)
