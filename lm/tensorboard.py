"""TensorBoard event files of a run's metrics, written with the standard library only.

``tensorboard --logdir runs/`` shows every run directory that holds an
``events.out.tfevents.*`` file; :class:`RunEvents` keeps one in each run directory in step
with its metrics.jsonl (train/loss, val/loss, val/bpb, lr, grad_norm, tokens_per_s against
the step), so a sweep's runs appear side by side, and, synced every few seconds from the
progress callback, while they train.

File format (what TensorFlow's ``tf.summary`` writes; TensorBoard's loader reads it):
TFRecord framing, each record ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little endian; CRC-32C, Castagnoli polynomial, masked as
``((c >> 15 | c << 17) + 0xa282ead8) mod 2^32``); each record an ``Event`` protocol buffer
(wall_time = 1: double, step = 2: int64, file_version = 3: string, summary = 5:
``Summary { repeated Value value = 1 }`` with ``Value { string tag = 1; float simple_value
= 2 }``). The first event of a file carries ``file_version = "brain.Event:2"``.

Why a default and not an extra, and why not tensorboardX: the format above is the only
part of TensorBoard a run needs, and it is ~100 lines of stdlib code (struct, a CRC table,
a hand-encoded protobuf of four fields), so every install writes event files with no new
dependency; tensorboardX would pull protobuf and numpy version constraints into the core
install for scalars alone. Viewing needs ``pip install tensorboard`` (not a dependency).
The tests parse the files back with this module's reader and with the protobuf runtime.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from lm.records import disk_full_guard

EVENT_PREFIX = "events.out.tfevents."
SUFFIX = ".scalelab"  # marks the files this module writes (and may replace)
FILE_VERSION = "brain.Event:2"
# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_bpb": "val/bpb", "lr": "lr",
        "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s"}


# ------------------------------------------------------------------------- crc32c


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; crc32c(b"123456789") == 0xE3069283."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------- protobuf


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def encode_event(wall_time: float, step: int, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """An ``Event`` protocol buffer holding scalar summaries (or the file-version header)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
                          for tag, v in scalars.items())
        out += _field(5, 2, values)
    return out


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def decode_event(data: bytes) -> dict:
    """{"wall_time", "step", "file_version" (or None), "scalars": {tag: value}} of an Event."""
    event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
    for number, value in _fields(data):
        if number == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for vnum, vbuf in _fields(value):
                if vnum != 1:
                    continue
                parts = dict(_fields(vbuf))
                if 1 in parts and 2 in parts:
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event


def read_events(path: str | Path) -> list[dict]:
    """Every event of an event file (:func:`decode_event`), checking both CRCs of each record.

    Raises:
      ValueError: a record's checksum does not match or the file ends inside a record.
    """
    data = Path(path).read_bytes()
    events, i = [], 0
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = data[i:i + 8]
        (length,), (hcrc,) = struct.unpack("<Q", header), struct.unpack("<I", data[i + 8:i + 12])
        if hcrc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        body = data[i + 12:i + 12 + length]
        if len(body) < length or i + 16 + length > len(data):
            raise ValueError(f"{path}: truncated record at byte {i}")
        (bcrc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
        if bcrc != masked_crc32c(body):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        events.append(decode_event(body))
        i += 16 + length
    return events


# --------------------------------------------------------------------- run files


def scalars_of(record: Mapping) -> dict[str, float]:
    """The TensorBoard scalars of one metrics.jsonl record (finite numbers of :data:`TAGS`)."""
    out = {}
    for key, tag in TAGS.items():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)
    return out


class RunEvents:
    """Keeps a run directory's event file in step with its metrics.jsonl.

    :meth:`sync` appends the records written since the last call. The first call of an
    instance starts a new file with every record (a resumed run's metrics.jsonl was cut back
    to its checkpoint) and removes the event files this module wrote there before, so the
    run directory always holds one file matching metrics.jsonl. Only complete lines are
    read: a line being written is picked up by the next call.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path: Path | None = None
        self.offset = 0

    def sync(self) -> int:
        """Append the new records; the number of events written (a full disk: ``lm.records.DiskFullError``)."""
        with disk_full_guard(self.run_dir, "writing TensorBoard events"):
            return self._sync()

    def _sync(self) -> int:
        metrics = self.run_dir / "metrics.jsonl"
        if not metrics.is_file():
            return 0
        if self.path is None:
            for old in self.run_dir.glob(f"{EVENT_PREFIX}*{SUFFIX}"):
                old.unlink()
            self.path = self.run_dir / f"{EVENT_PREFIX}{int(time.time())}.{socket.gethostname()}.{os.getpid()}{SUFFIX}"
            self.path.write_bytes(tfrecord(encode_event(time.time(), 0, file_version=FILE_VERSION)))
            self.offset = 0
        with open(metrics, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a damaged line: metrics.jsonl's reader reports it
            scalars = scalars_of(record) if isinstance(record, dict) else {}
            if scalars and isinstance(record.get("step"), int):
                records.append(tfrecord(encode_event(time.time(), record["step"], scalars)))
        if records:
            with open(self.path, "ab") as f:
                f.write(b"".join(records))
        return len(records)


class LiveEvents:
    """A ``progress(step, total, metrics)`` callback that forwards to ``progress`` and syncs
    the event files of ``run_dirs`` (:class:`RunEvents`) at most every ``every_s`` seconds;
    :meth:`close` syncs them a last time (call it however the training ended)."""

    def __init__(self, run_dirs, progress=None, every_s: float = 10.0):
        self.events = [RunEvents(d) for d in run_dirs]
        self.progress, self.every_s = progress, every_s
        self.last = time.monotonic()

    def __call__(self, step: int, total: int, metrics: Mapping[str, float]) -> None:
        if self.progress is not None:
            self.progress(step, total, metrics)
        if time.monotonic() - self.last >= self.every_s:
            self.sync()

    def sync(self) -> None:
        self.last = time.monotonic()
        for e in self.events:
            e.sync()

    def close(self) -> None:
        self.sync()
