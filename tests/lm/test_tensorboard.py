"""lm.train.tensorboard: event files written with the run's records, HParams of every run and of a study."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from lm.train import records, run_writer
from lm.train import tensorboard as tb
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig
from lm.data.config import DataConfig

RUN = RunConfig(model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
                data=DataConfig(source="synthetic", seq_len=16, batch_size=2),
                schedule=ScheduleConfig(kind="table", knots=((0, 1.0), (100, 0.1))), name="r")
REC = [{"step": 10, "tokens": 1, "flops": 2.0, "lr": 1e-3, "train_loss": 3.25, "grad_norm": 0.5},
       {"step": 20, "tokens": 2, "flops": 4.0, "lr": 5e-4, "train_loss": 2.75, "val_loss": 2.9, "val_bpb": 4.1,
        "tokens_per_s": None}]


def _protobuf_event_class():
    """The Event message of tensorflow/core/util/event.proto (the scalar fields), built here with the
    protobuf runtime: a decoder independent of tensorboardX's generated classes."""
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
    """The raw TFRecord payloads of a file (framing only: uint64 length, crc, data, crc)."""
    data, i, out = path.read_bytes(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        out.append(data[i + 12:i + 12 + n])
        i += 16 + n
    return out


def _scalars(path):
    """(step, {tag: value}) of every event with scalars, decoded with the independent Event class."""
    Event = _protobuf_event_class()
    events = [Event.FromString(r) for r in _records(path)]
    return [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events
            if any(v.tag and not v.tag.startswith("_hparams_") for v in e.summary.value)]


def _plugin(path, tag):
    """The HParams plugin data under ``tag`` in an event file."""
    from tensorboardX.proto import event_pb2

    for body in _records(path):
        for v in event_pb2.Event.FromString(body).summary.value:
            if v.tag == tag:
                assert v.metadata.plugin_data.plugin_name == "hparams"
                return HParamsPluginData.FromString(v.metadata.plugin_data.content)
    raise AssertionError(f"{tag} not in {path}")


def _files(run_dir, part):
    return sorted(run_dir.glob(f"{tb.EVENT_PREFIX}*.{part}{tb.SUFFIX}"))


def test_each_record_is_in_the_event_file_as_soon_as_it_is_written(tmp_path):
    records.write_config(tmp_path, RUN)
    with run_writer.MetricsLog(records.prepare_metrics(tmp_path, None)) as log:
        (path,) = _files(tmp_path, "log")
        assert _scalars(path) == []
        log.write(REC[0])  # read back before close: no sync interval, no queue
        assert _scalars(path) == [(10, {"train/loss": 3.25, "lr": np.float32(1e-3), "grad_norm": 0.5})]
        log.write(REC[1])
        assert _scalars(path)[1] == (20, {"train/loss": 2.75, "val/loss": np.float32(2.9),
                                          "val/bpb": np.float32(4.1), "lr": np.float32(5e-4)})
    read = tb.read_events(path)  # the module's reader agrees (and checks both checksums)
    assert read[0]["file_version"] == "brain.Event:2"
    assert [(e["step"], e["scalars"]) for e in read if e["scalars"]] == _scalars(path)
    start = _plugin(path, "_hparams_/session_start_info").session_start_info.hparams
    assert start["model.d_model"].number_value == 32 and start["data.source"].string_value == "synthetic"
    assert start["schedule.knots"].string_value == json.dumps([[0, 1.0], [100, 0.1]])  # a list: JSON text
    assert "model.head_dim" not in start  # None: unset
    assert not run_writer.MetricsLog(tmp_path / "x.jsonl", enabled=False)._events  # another host: no events


def test_a_resumed_run_starts_one_file_with_the_records_it_keeps(tmp_path):
    records.write_config(tmp_path, RUN)
    with run_writer.MetricsLog(records.prepare_metrics(tmp_path, None)) as log:
        for r in REC:
            log.write(r)
    with run_writer.MetricsLog(records.prepare_metrics(tmp_path, 10)) as log:  # resumed from the step-10 checkpoint
        (path,) = _files(tmp_path, "log")
        assert [s for s, _ in _scalars(path)] == [10]
        log.write({**REC[1], "step": 20})
    assert [s for s, _ in _scalars(path)] == [10, 20]
    assert list(tmp_path.glob(f"{tb.EVENT_PREFIX}*")) == [path]


@pytest.mark.parametrize("status, expected", [("complete", "STATUS_SUCCESS"), ("diverged", "STATUS_FAILURE")])
def test_the_result_writes_the_final_metrics_and_the_session_end(tmp_path, status, expected):
    records.write_config(tmp_path, RUN)
    with run_writer.MetricsLog(records.prepare_metrics(tmp_path, None)) as log:
        log.write(REC[0])
    result = records.result_record(RUN, status=status, final_train_loss=2.5, final_val_loss=float("nan"),
                                   final_val_bpb=3.5, compile_s=0.0, train_s=1.0, resumed_from=None)
    records.write_result(tmp_path, result)
    (log_file,), (path,) = _files(tmp_path, "log"), _files(tmp_path, "result")
    assert sorted([log_file.name, path.name]) == [log_file.name, path.name]  # read after the log
    assert _scalars(path) == [(RUN.train.steps, {"final/train_loss": 2.5, "final/val_bpb": 3.5})]  # NaN: none
    assert _plugin(path, "_hparams_/session_end_info").session_end_info.status == Status.Value(expected)


def test_a_study_writes_the_fields_its_runs_vary_as_the_hparams_experiment(tmp_path):
    runs = [dataclasses.replace(RUN, name=f"r{i}", model=dataclasses.replace(RUN.model, d_model=d, head_dim=h),
                                optimizer=OptimizerConfig(learning_rate=lr))
            for i, (d, h, lr) in enumerate([(32, None, 1e-3), (32, 8, 2e-3), (64, None, 1e-3)])]
    varied = tb.varied_fields(records.flatten(r.to_dict()) for r in runs)
    assert varied == {"model.d_model": 32, "model.head_dim": 8, "optimizer.learning_rate": 1e-3}
    path = tb.write_experiment(tmp_path, varied)
    assert path == tmp_path / tb.EXPERIMENT and sorted(p.name for p in tmp_path.iterdir()) == [tb.EXPERIMENT]
    experiment = _plugin(path, "_hparams_/experiment").experiment
    assert sorted(h.name for h in experiment.hparam_infos) == sorted(varied)
    assert sorted(m.name.tag for m in experiment.metric_infos) == sorted(tb.FINAL_TAGS.values())
    assert tb.write_experiment(tmp_path, {}) is None  # nothing varies: no experiment


def test_damaged_event_file_is_reported(tmp_path):
    records.write_config(tmp_path, RUN)
    with run_writer.MetricsLog(records.prepare_metrics(tmp_path, None)) as log:
        log.write(REC[0])
    (path,) = _files(tmp_path, "log")
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="bad data checksum"):
        tb.read_events(path)
    path.write_bytes(good[:-3])
    with pytest.raises(ValueError, match="truncated"):
        tb.read_events(path)
