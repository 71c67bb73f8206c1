"""The manifest of a prepared directory (:mod:`lm.data.prepare`): :func:`merge` writes it from the units'
done markers, :func:`verify` checks every file against the hashes those markers recorded.

Each finished unit's ``shards/<k>.done.json`` records the sha256 of each of its files
(markers written before that record only one sha256 per split, over the tokens and the
document table together; those are checked by re-reading both), its counts, the unit it
tokenized and the listing entries of its input files. :func:`verify` reports one line per
bad file; it also recomputes the manifest's counts and fingerprint from the markers and
checks the tokenizer file against the sha256 the markers and the manifest name.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from lm.data import corpus
from lm.data.plan import (FORMAT, MANIFEST, PLAN, SPLITS, done_path, listing_changes, out_tokenizer, read_json,
                             read_marker, read_plan, shard_path, token_dtype, tokenizer_file_sha, unaccounted_shards,
                             write_json)
from lm.data.tokenizer import TOKENIZER_FILES

FIRST_BAD = 5  # bad documents whose place is recorded (all are counted)


def fingerprint(config: dict, tok_sha: str | None, markers: list[dict]) -> str:
    """16 hex digits identifying a prepared corpus: its arguments, tokenizer file and every shard's sha256."""
    return hashlib.sha256(json.dumps(
        [config, tok_sha, [[m["splits"][s]["sha256"] for s in SPLITS] for m in markers]]).encode()).hexdigest()[:16]


def merge(out: str) -> dict:
    """Check that every unit of ``out`` is done, with one tokenizer, from the unchanged input; write and
    return manifest.json."""
    if not os.path.isfile(os.path.join(out, PLAN)):
        raise ValueError(f"--merge: {out!r} holds no {PLAN}; run the --shard jobs into this --out first")
    plan = read_plan(out)
    units = plan["units"]
    if "listing" in plan:
        data_dir = units[0].get("data_dir") if units else None
        now = corpus.listing(plan["config"]["input"], tfds_data_dir=data_dir)
        if now != plan["listing"]:
            raise ValueError(f"--input={plan['config']['input']!r} changed while {out!r} was prepared "
                             f"({listing_changes(plan['listing'], now)}); rerun with --overwrite to prepare afresh")
    missing = [k for k in range(len(units)) if not os.path.isfile(done_path(out, k))]
    if missing:
        raise ValueError(f"--merge: {len(missing)} of {len(units)} units of {out!r} are not done "
                         f"(first: {missing[:5]}); run the missing --shard jobs first")
    tok = out_tokenizer(out)
    tok_sha = tokenizer_file_sha(out)
    markers = [read_marker(out, k) for k in range(len(units))]
    listed = {tuple(e) for e in plan.get("listing", [])}
    other = [k for k, m in enumerate(markers) if m.get("input_unit", units[k]) != units[k]
             or any(tuple(f) not in listed for f in m.get("input_files", []))]
    if other:
        raise ValueError(f"--merge: units {other[:5]} of {out!r} were tokenized from another plan or input; rerun "
                         "the preparation (it redoes them)")
    stale = [m["unit"] for m in markers if m["tokenizer_sha256"] != tok_sha]
    if stale:
        raise ValueError(f"--merge: units {stale[:5]} were tokenized with another tokenizer than {out}'s; "
                         "delete their shards/<unit>.done.json and rerun")
    splits = {s: {f: sum(m["splits"][s][f] for m in markers) for f in ("documents", "tokens", "bytes")}
              for s in SPLITS}
    skipped = [m.get("skipped", {"documents": 0, "first": []}) for m in markers]
    file = next((name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(out, name))), None)
    manifest = {
        "format": FORMAT, "source": plan["config"]["input"], "text_key": plan["config"]["text_key"],
        "validation_fraction": plan["config"]["validation_fraction"], "split_seed": plan["config"]["split_seed"],
        "tokenizer": {"spec": plan["config"]["tokenizer"], "file": file, "sha256": tok_sha, **tok.describe()},
        "token_dtype": token_dtype(tok.vocab_size).str, "units": len(units), "splits": splits,
        "bad_documents": {"skipped": sum(s["documents"] for s in skipped),
                          "first": [w for s in skipped for w in s["first"]][:FIRST_BAD]},
        "fingerprint": fingerprint(plan["config"], tok_sha, markers),
    }
    write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


def _file_sha(path: str, h=None) -> str:
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _check_split(out: str, k: int, split: str, marker: dict) -> tuple[list[str], int]:
    """Problems of unit k's files of ``split`` and the tokens checked."""
    want = marker["splits"][split]
    tpath, dpath = shard_path(out, k, split, "tokens.bin"), shard_path(out, k, split, "docs.npy")
    missing = [p for p in (tpath, dpath) if not os.path.isfile(p)]
    if missing:
        return [f"{p}: missing (unit {k} is marked done)" for p in missing], 0
    files = marker.get("files", {})
    if files:
        bad = [f"{p}: sha256 differs from the one in {done_path(out, k)}"
               for p, name in ((tpath, f"{split}.tokens.bin"), (dpath, f"{split}.docs.npy"))
               if _file_sha(p) != files.get(name)]
        return bad, want["tokens"] if not bad else 0
    try:  # an older marker: one sha256 over the tokens and the document table
        table = np.load(dpath)
    except (OSError, ValueError) as err:
        return [f"{dpath}: cannot be read ({err})"], 0
    h = hashlib.sha256()
    _file_sha(tpath, h)
    h.update(np.ascontiguousarray(table, dtype=np.int64).tobytes())
    if h.hexdigest() != want["sha256"]:
        return [f"{tpath} / {os.path.basename(dpath)}: sha256 differs from the one in {done_path(out, k)}"], 0
    return [], want["tokens"]


def verify(out: str) -> tuple[list[str], str]:
    """(one line per bad file, a one-line summary) for prepared directory ``out``; writes nothing.

    Raises:
      ValueError: ``out`` holds no readable plan.json (it is not a prepared directory).
    """
    if not os.path.isdir(out):
        raise ValueError(f"--verify={out!r}: no such directory")
    if not os.path.isfile(os.path.join(out, PLAN)):
        raise ValueError(f"--verify={out!r} holds no {PLAN}: it is not a prepared directory")
    plan = read_plan(out)
    units = plan["units"]
    problems = [f"{os.path.join(out, 'shards', n)}: no unit of {PLAN} accounts for it"
                for n in unaccounted_shards(out, len(units))]
    tok_sha = tokenizer_file_sha(out)
    markers, tokens, files = [], 0, 0
    for k in range(len(units)):
        try:
            marker = read_marker(out, k)
        except ValueError as err:
            problems.append(f"{done_path(out, k)}: missing (unit {k} is not done)" if not os.path.exists(
                done_path(out, k)) else str(err))
            continue
        markers.append(marker)
        if marker.get("tokenizer_sha256") != tok_sha:
            problems.append(f"{done_path(out, k)}: unit {k} was tokenized with another tokenizer than the one in {out}")
        for split in SPLITS:
            bad, n = _check_split(out, k, split, marker)
            problems += bad
            tokens += n
            files += 2
    path = os.path.join(out, MANIFEST)
    if len(markers) == len(units) and os.path.exists(path):
        try:
            manifest = read_json(path, "the manifest")
        except ValueError as err:
            problems.append(str(err))
        else:
            counts = {s: {f: sum(m["splits"][s][f] for m in markers) for f in ("documents", "tokens", "bytes")}
                      for s in SPLITS}
            if (manifest.get("format") != FORMAT or manifest.get("splits") != counts
                    or manifest.get("fingerprint") != fingerprint(plan["config"], tok_sha, markers)):
                problems.append(f"{path}: its counts or fingerprint differ from the units' done markers")
            if manifest.get("tokenizer", {}).get("sha256") != tok_sha:
                problems.append(f"{path}: names another tokenizer file than the one in {out}")
    elif len(markers) == len(units):
        problems.append(f"{path}: missing (every unit is done: run with --merge)")
    summary = (f"OK: {out}: {len(units)} units, {files} shard files, {tokens:,} tokens match their sha256"
               if not problems else f"{len(problems)} problems in {out}")
    return problems, summary
