"""The layout and plan of a prepared directory (:mod:`lm.data.prepare`), and the checks on ``--out`` made before
writing anything.

Layout helpers: the paths of a unit's files, its done marker and the tokenizer file; JSON
records written atomically (:func:`write_json`) and read with one-line errors.

``plan.json`` holds the arguments that change the output ("config"), the input listing
("listing": each input file's [path, size, mtime_ns], :func:`lm.data.corpus.listing`) and the
work units ("units", :func:`lm.data.corpus.plan_units`). A rerun resumes when the input still
has the same listing. When a file was added, removed, resized or touched since:
  - a finished preparation (manifest.json written) is refused; ``overwrite`` prepares afresh;
  - an unfinished one (a bad document stopped it, and the file was fixed) is re-planned:
    finished units whose unit and input files (recorded in their done markers) are
    unchanged are kept, the others are redone.
A plan.json written before listings were recorded is accepted when the input still yields
the same units (its listing is then added) and refused otherwise.

An ``--out`` is usable when it does not exist, is empty, or holds a plan.json. One holding
prepared files (manifest.json, shards/, a tokenizer) but no plan.json is refused, since
nothing says which input they came from; ``overwrite`` clears it. One holding other files
and no plan.json is not a prepared directory and is refused even with ``overwrite``. Shard
files that no unit of the plan accounts for are refused. ``overwrite`` removes only the
prepared directory's own entries (:data:`OWN_ENTRIES` and their temporary files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

from lm.data import corpus
from lm.data.subword import file_sha256, load_tokenizer
from lm.data.tokenizer import TOKENIZER_FILES, ByteTokenizer, parse_bpe_spec

FORMAT = "scalelab-prepared-v1"
PLAN, MANIFEST, SHARDS = "plan.json", "manifest.json", "shards"
SPLITS = ("train", "validation")
OWN_ENTRIES = (PLAN, MANIFEST, SHARDS, *TOKENIZER_FILES)
# a unit's files and done marker, and the temporary files they are written through
_SHARD_NAME = re.compile(r"(\d{6,})\.(?:(?:train|validation)\.(?:tokens\.bin|docs\.npy)|done\.json)(?:\.\d+)?(?:\.tmp)?")
OVERWRITE_HINT = "rerun with --overwrite to prepare afresh, or choose another --out"


def shard_path(out: str, k: int, split: str, what: str) -> str:
    """Path of unit k's ``what`` file ("tokens.bin" | "docs.npy") of ``split``."""
    return os.path.join(out, SHARDS, f"{k:06d}.{split}.{what}")


def done_path(out: str, k: int) -> str:
    return os.path.join(out, SHARDS, f"{k:06d}.done.json")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def out_tokenizer(out: str):
    """The tokenizer stored in ``out`` (byte when there is no tokenizer file)."""
    return load_tokenizer(out) if any(os.path.isfile(os.path.join(out, n)) for n in TOKENIZER_FILES) else ByteTokenizer()


def tokenizer_file_sha(out: str) -> str | None:
    """sha256 of the tokenizer file of ``out`` (None: byte tokenizer)."""
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(out, name)):
            return file_sha256(os.path.join(out, name))
    return None


def tmp_name(path: str) -> str:
    """A temporary file beside ``path``, unique to this process (job-array tasks share a directory)."""
    return f"{path}.{os.getpid()}.tmp"


def write_json(path: str, obj) -> None:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same directory, fsync, rename."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str, what: str) -> dict:
    """The JSON object in ``path``; ValueError naming the file when it is missing or damaged."""
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path} cannot be read ({err}): it is damaged") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} holds a JSON {type(value).__name__}, not an object: it is damaged")
    return value


def read_plan(out: str) -> dict:
    """``out``'s plan.json; ValueError naming it when it is missing, damaged or lacks a plan's fields."""
    path = os.path.join(out, PLAN)
    plan = read_json(path, "the plan")
    if plan.get("format") != FORMAT or not isinstance(plan.get("config"), dict) \
            or not isinstance(plan.get("units"), list):
        raise ValueError(f"the plan {path} is not a {FORMAT} plan (format, config and units): it is damaged")
    return plan


def read_marker(out: str, k: int) -> dict:
    """Unit k's done marker; ValueError naming it when it is damaged or lacks a marker's fields."""
    path = done_path(out, k)
    marker = read_json(path, "the unit marker")
    splits = marker.get("splits")
    fields = ("documents", "tokens", "bytes", "sha256")
    if not (isinstance(splits, dict) and all(isinstance(splits.get(s), dict) and all(f in splits[s] for f in fields)
                                              for s in SPLITS) and "tokenizer_sha256" in marker):
        raise ValueError(f"the unit marker {path} lacks the counts and sha256 of its splits: it is damaged; "
                         "delete it and rerun the preparation to redo the unit")
    return marker


def plan_config(cfg) -> dict:
    """The arguments of a :class:`lm.data.prepare.PrepareConfig` that change the prepared output."""
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("tfds_data_dir", "on_bad_document")}
    if parse_bpe_spec(cfg.tokenizer) is None:  # only a trained tokenizer depends on the sample
        del args["tokenizer_sample_bytes"]
    return args


def new_plan(cfg, old: dict | None = None) -> dict:
    """The plan of ``cfg`` (config, input listing, units): reads the input's file list and parquet
    footers, writes nothing; a bad input raises :class:`lm.data.corpus.CorpusError`. The units of plan
    ``old`` are reused when its listing is the input's (no footer is read again on a rerun)."""
    listing = corpus.listing(cfg.input, tfds_data_dir=cfg.tfds_data_dir)
    if old is not None and old.get("listing") == json.loads(json.dumps(listing)):
        units = old["units"]
    else:
        units = corpus.plan_units(cfg.input, tfds_data_dir=cfg.tfds_data_dir, text_key=cfg.text_key)
    return json.loads(json.dumps({"format": FORMAT, "config": plan_config(cfg), "listing": listing, "units": units}))


def _own(name: str) -> bool:
    return name in OWN_ENTRIES or any(name.startswith(e + ".") and name.endswith(".tmp") for e in OWN_ENTRIES)


def existing_plan(out: str, config: dict, *, overwrite: bool) -> dict | None:
    """The plan in ``out`` to resume with arguments ``config``, or None to prepare afresh; writes nothing.

    Raises:
      ValueError: ``out`` is a file; holds other files and no plan.json; holds prepared files
        but no plan.json, a damaged plan.json or one with other arguments (unless ``overwrite``).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out={out!r} is a file, not a directory; choose a directory")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if all(e.endswith(".tmp") and _own(e) for e in entries):  # empty, or a job-array task is writing the plan
        return None
    if PLAN not in entries:
        other = [e for e in entries if not _own(e)]
        if other:
            raise ValueError(f"--out={out!r} holds other files ({', '.join(other[:3])}) and no {PLAN}: it is not "
                             "a prepared directory and nothing there is removed; choose a new or empty --out")
        if not overwrite:
            raise ValueError(f"--out={out!r} holds prepared files ({', '.join(entries[:3])}) but no {PLAN}, so "
                             f"nothing says which input they came from; {OVERWRITE_HINT}")
        return None
    if overwrite:
        return None
    try:
        old = read_plan(out)
    except ValueError as err:
        raise ValueError(f"{err}; {OVERWRITE_HINT}") from None
    if old["config"] != config:
        raise ValueError(f"--out={out!r} holds a preparation with other arguments {old.get('config')}; "
                         f"use another --out or --overwrite (asked for {config})")
    return old


def check_resume(out: str, old: dict, new: dict) -> tuple[dict, list[int], str | None]:
    """(the plan to go on with, finished units to redo, what changed) for ``out``'s plan ``old`` and the
    input's plan ``new``; writes nothing.

    The same listing resumes ``old``. A changed input re-plans an unfinished preparation (no
    manifest yet, e.g. after fixing a bad document): finished units whose unit and input files
    are unchanged are kept, the others are redone.

    Raises:
      ValueError: the input changed since a finished preparation (manifest.json written), or
        since a plan.json without a listing whose units differ; ``out/shards`` holds files that no
        unit of ``old`` accounts for.
    """
    path = os.path.join(out, PLAN)
    extra = unaccounted_shards(out, len(old.get("units", [])))
    if extra:
        raise ValueError(f"{os.path.join(out, SHARDS)} holds {len(extra)} file(s) that no unit of {PLAN} accounts "
                         f"for ({', '.join(extra[:3])}); {OVERWRITE_HINT}")
    if "listing" not in old:  # written before plans recorded the listing: the units must still match
        if old.get("units") != new["units"]:
            raise ValueError(f"--input={new['config']['input']!r} changed since {path} was written (its work "
                             f"units differ); {OVERWRITE_HINT}")
        return {**old, "listing": new["listing"]}, [], None
    if old["listing"] == new["listing"] and old["units"] == new["units"]:
        return old, [], None
    changes = listing_changes(old["listing"], new["listing"])
    if os.path.exists(os.path.join(out, MANIFEST)):
        raise ValueError(f"--input={new['config']['input']!r} changed since {out!r} was prepared ({changes}); "
                         f"{OVERWRITE_HINT}")
    now = {e[0]: e for e in new["listing"]}
    stale = []
    for k in range(len(old["units"])):
        if not os.path.exists(done_path(out, k)):
            continue
        try:
            marker = read_marker(out, k)
        except ValueError:
            stale.append(k)
            continue
        files = marker.get("input_files")  # markers written before these were recorded are redone
        if not (k < len(new["units"]) and new["units"][k] == marker.get("input_unit", old["units"][k])
                and files and all(now.get(f[0]) == f for f in files)):
            stale.append(k)
    return new, stale, changes


def drop_units(out: str, units: list[int], keep_below: int) -> None:
    """Remove the done markers (first) and files of ``units``, and every unit file numbered ``keep_below`` or more."""
    for k in units:
        if os.path.exists(done_path(out, k)):
            os.unlink(done_path(out, k))
    folder, drop = os.path.join(out, SHARDS), set(units)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        m = _SHARD_NAME.fullmatch(name)
        if m and (int(m.group(1)) in drop or int(m.group(1)) >= keep_below):
            os.unlink(os.path.join(folder, name))


def listing_changes(old: list, new: list) -> str:
    """What changed between two listings, e.g. "1 file added (x.txt); 1 changed (y.jsonl)"."""
    a, b = {e[0]: e[1:] for e in old}, {e[0]: e[1:] for e in new}
    parts = []
    for what, names in (("added", sorted(b.keys() - a.keys())), ("removed", sorted(a.keys() - b.keys())),
                        ("changed", sorted(p for p in a.keys() & b.keys() if a[p] != b[p]))):
        if names:
            parts.append(f"{len(names)} file{'s' if len(names) > 1 else ''} {what} ({', '.join(names[:2])}"
                         f"{', ...' if len(names) > 2 else ''})")
    return "; ".join(parts) or "its units differ"


def unaccounted_shards(out: str, units: int) -> list[str]:
    """Names under ``out/shards`` that are no file of units 0..units-1 (nor their temporary files)."""
    folder = os.path.join(out, SHARDS)
    if not os.path.isdir(folder):
        return []
    return [n for n in sorted(os.listdir(folder))
            if not (m := _SHARD_NAME.fullmatch(n)) or int(m.group(1)) >= units]


def remove_prepared(out: str) -> list[str]:
    """Remove the prepared directory's own entries (and their temporary files) from ``out``; the names removed."""
    gone = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        path = os.path.join(out, name)
        if not _own(name):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        gone.append(name)
    return gone


def create_out(out: str) -> list[str]:
    """Create ``out`` (and its missing parents); the directories created, outermost first."""
    missing, p = [], os.path.abspath(out)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(out, exist_ok=True)
    return missing[::-1]


def undo_out(created: list[str]) -> None:
    """Remove what a failed first call wrote: ``created`` (from :func:`create_out`) and its prepared entries."""
    if not created:
        return
    remove_prepared(created[-1])
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:  # not empty: something else was put there meanwhile
            return
