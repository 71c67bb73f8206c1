"""Checks on an output directory and the records in it, made before anything is written.

Every command that trains or analyses (``experiments.train`` and the studies) refuses with
one line naming the path and what is wrong, and writes nothing, when:

- ``--out`` is a file, lies under a file, or cannot be written (:func:`check_writable_dir`);
- a JSON record it must trust (study.json, a run's config.json) cannot be read or is not a
  JSON object (:func:`read_json_record`);
- a run directory holds another config than the one asked for (:func:`config_differences`
  names the fields that differ).

A run directory's records (result.json, failure.json, runner.json) are read and written by
``lm.train.records`` alone, leniently where a kill may have cut one short (``lm.train.records.read_result``:
unreadable means "not finished"); the runner writes its own files (study.json, tables) whole or
not at all (``lm.train.records.atomic_write``, re-exported here as :func:`atomic_write`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lm.train.records import atomic_write  # noqa: F401  (the one atomic writer; the runner's modules use it from here)
from lm.train.records import flatten


class OutputError(ValueError):
    """An output directory or a record in it that cannot be used; raised before anything is written."""


def check_writable_dir(path: str | Path, what: str = "--out") -> Path:
    """Raise :class:`OutputError` unless ``path`` is (or can be created as) a writable directory.

    Creates nothing that stays: the nearest existing directory on the path is probed with a
    temporary file (``os.access`` alone is wrong for root, ACLs and read-only mounts).
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise OutputError(f"{what}={str(path)!r} {where}, not a directory; choose a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OutputError(f"{what}={str(path)!r}: cannot write in {probe} ({err.strerror or err}); "
                          "choose a writable directory") from err
    return path


def read_json_record(path: str | Path, what: str = "") -> dict | None:
    """The JSON object in ``path``; None if the file does not exist.

    Raises:
      OutputError: the file is not valid JSON (e.g. truncated) or holds something else than
        an object; the message names the file and says nothing was changed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise OutputError(f"{what or path.name} {path} cannot be read ({err}); nothing was changed") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise OutputError(f"{what or path.name} {path} is not valid JSON ({err.msg} at line {err.lineno}): "
                          "it is damaged; restore or remove it (nothing was changed)") from err
    if not isinstance(value, dict):
        raise OutputError(f"{what or path.name} {path} holds a JSON {type(value).__name__}, not an object: "
                          "it is damaged; restore or remove it (nothing was changed)")
    return value


def config_differences(old: Mapping, new: Mapping, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields in which two config dicts differ, as ``"path: old -> new"`` (sorted by path).

    Args:
      old, new: nested config dicts (``RunConfig.to_dict()`` or a config.json); lists and
        tuples compare equal element-wise.
      ignore: dotted paths left out (fields that do not change what is trained).
    """
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    missing = object()

    def show(v):
        return "(absent)" if v is missing else json.dumps(v)

    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if key not in ignore and x != y:
            out.append(f"{key}: {show(x)} -> {show(y)}")
    return out


def remove_entries(directory: str | Path, names: tuple[str, ...]) -> list[str]:
    """Remove the named files and folders directly under ``directory``; the names removed.

    Only these entries go (a run's own records), never the directory or anything else in it.
    """
    directory = Path(directory)
    gone = []
    for name in names:
        p = directory / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        gone.append(name)
    return gone
