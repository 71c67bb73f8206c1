"""Check a prepared directory (:mod:`lm.prepare`) against the hashes it recorded: one line per bad file.

Each finished unit's ``shards/<k>.done.json`` records the sha256 of each of its files
(markers written before that record only one sha256 per split, over the tokens and the
document table together; those are checked by re-reading both) and their counts. The
manifest's counts and fingerprint are recomputed from the markers, and the tokenizer file
is checked against the sha256 the markers and the manifest name.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from lm.prepare import FORMAT, MANIFEST, PLAN, SPLITS, fingerprint, tokenizer_file_sha
from lm.prepare_plan import done_path, read_json, read_marker, read_plan, shard_path, unaccounted_shards


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
