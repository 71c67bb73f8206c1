"""Prepare a corpus once: ``python -m experiments.prepare_data --input SPEC --out DIR [options]``.

Tokenizes every document once, in worker processes, into token shards that the training
pipeline memory-maps and reads by random access (fixed-width uint16/uint32 token files
plus a per-document table; format in :mod:`lm.data.prepare`), and writes ``DIR/manifest.json``
(documents, tokens and bytes per split, the tokenizer, the source spec, a fingerprint).
Then train on it with ``python -m experiments.train --data.source prepared --data.path DIR``
or any study's ``--data DIR``.

Inputs (``--input``): a glob or a directory of text / jsonl / jsonl.gz / parquet files, or
``tfds:NAME[:VERSION]/SPLIT`` (with ``--tfds-data-dir``). Tokenizers (``--tokenizer``):
``byte`` (default), ``bpe:VOCAB`` (byte-level BPE trained on a sample of the training
split), or the path of a ``tokenizer.json`` or a SentencePiece ``.model``.

Rerunning the same command after a kill finishes the work without redoing finished units;
the plan is keyed on the input listing (each file's name, size and mtime): after a
finished preparation a changed input is refused unless ``--overwrite`` prepares afresh
(removing only the directory's own files); an unfinished one is re-planned, keeping the
finished units whose files did not change (fix a bad document, rerun). A job array runs ``--shard i/n``
on n machines (same --out on a shared disk), then one ``--merge`` writes the manifest.
``--verify DIR`` re-hashes the shards against the sha256 their markers recorded.

Errors are one line on stderr naming the file (and line or row): exit 2 for refused input
or a bad document (nothing written, or the finished units kept), 1 for a full disk (the
finished units stay valid: rerun to resume). A bad document (invalid UTF-8, a malformed
jsonl line, a text field that is not a string) stops the run unless ``--on-bad-document
skip`` counts and skips it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from lm.data import prepare
from lm.data.manifest import verify

# experiments.lib (the one-line errors of experiments.train) is imported inside the functions:
# importing it loads jax, which the tokenizing worker processes (spawn re-imports this module) never use.


def build_parser() -> argparse.ArgumentParser:
    from experiments.lib.cli import OneLineParser

    p = OneLineParser(prog="python -m experiments.prepare_data", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="glob, directory, or tfds:NAME[:VERSION]/SPLIT (not needed with --merge)")
    p.add_argument("--out", default=None, help="the prepared directory")
    p.add_argument("--tokenizer", default="byte", help="byte | bpe:VOCAB | PATH (tokenizer.json or .model)")
    p.add_argument("--text-key", default="text", help="text field of jsonl / parquet / TFDS records")
    p.add_argument("--validation-fraction", type=float, default=0.01, help="share of documents held out, in [0, 1)")
    p.add_argument("--split-seed", type=int, default=0, help="key of the document hash deciding the split")
    p.add_argument("--tokenizer-sample-mb", type=float, default=256.0,
                   help="MB of training text the bpe:VOCAB tokenizer is learned from (> 0)")
    p.add_argument("--on-bad-document", choices=prepare.BAD_DOCUMENT_POLICIES, default="error",
                   help="a document that cannot be read (invalid UTF-8, a malformed jsonl line, a non-string text "
                        "field): error (stop, naming its file and line) or skip (count it in the manifest)")
    p.add_argument("--overwrite", action="store_true",
                   help="prepare afresh: remove --out's plan, manifest, shards and tokenizer first (nothing else); "
                        "without it a changed input or other arguments are refused")
    p.add_argument("--shard", default=None, metavar="I/N", help="prepare only units I, I+N, ... (job arrays)")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    p.add_argument("--merge", action="store_true", help="write the manifest once every --shard job has finished")
    p.add_argument("--verify", default=None, metavar="DIR",
                   help="re-hash DIR's shards against the sha256 in their done markers: one line per bad file, "
                        "exit 2 on a mismatch")
    p.add_argument("--tfds-data-dir", default=None, help="data directory of a tfds: input")
    return p


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard={text!r}: expected I/N with 0 <= I < N, e.g. 0/8") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard={text!r}: expected I/N with 0 <= I < N, e.g. 0/8")
    return i, n


def _config(args) -> prepare.PrepareConfig:
    """The preparation the flags ask for; ValueError naming the flag (checked before anything is written)."""
    if not args.input:
        raise ValueError("--input is required (unless --merge or --verify)")
    mb = args.tokenizer_sample_mb
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"--tokenizer-sample-mb={mb}: must be a finite number > 0")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction={args.validation_fraction}: must be in [0, 1)")
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers}: must be >= 1")
    return prepare.PrepareConfig(input=args.input, tokenizer=args.tokenizer, text_key=args.text_key,
                                 validation_fraction=args.validation_fraction, split_seed=args.split_seed,
                                 tfds_data_dir=args.tfds_data_dir, on_bad_document=args.on_bad_document,
                                 tokenizer_sample_bytes=max(1, int(mb * 2**20)))


def main(argv=None) -> dict:
    """Prepare, merge or verify; a refused input is one line on stderr and exit 2, a full disk exit 1."""
    from experiments.lib import outdir
    from experiments.lib.cli import RUN_FAILED, USAGE_ERROR, fail

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        return _verify(parser, args.verify)
    try:
        if not args.out:
            raise ValueError("--out is required (the prepared directory)")
        outdir.check_writable_dir(args.out)
        if args.merge:
            manifest = prepare.merge(args.out)
            print(_summary(manifest))
            return {"manifest": manifest}
        cfg = _config(args)
        shard = _shard(args.shard)
        t0 = time.perf_counter()
        tty = sys.stderr.isatty()  # the progress line stays off logs and captured stderr
        result = prepare.prepare(cfg, args.out, shard=shard, workers=args.workers, overwrite=args.overwrite,
                                 progress=(lambda d, n: print(f"\runits {d}/{n}", end="", file=sys.stderr))
                                 if tty else None)
        if tty:
            print(file=sys.stderr)
    except ValueError as err:
        fail(parser.prog, str(err), USAGE_ERROR)
    except (prepare.DiskFullError, OSError) as err:
        fail(parser.prog, str(err), RUN_FAILED)
    if result["replanned"]:
        print(f"--input changed since the plan ({result['replanned']}): re-planned the unfinished preparation; "
              f"{len(result['redone'])} finished units had changed and were redone")
    if result["removed"]:
        print(f"--overwrite: removed {', '.join(result['removed'])} from {args.out}")
    print(f"{result['done_now']} units tokenized in {time.perf_counter() - t0:.1f} s "
          f"({result['units'] - result['done_now']} already done)")
    if result["skipped"]:
        print(f"{result['skipped']} bad documents skipped (--on-bad-document skip)")
    if result["manifest"] is None:
        print(f"shard {shard[0]}/{shard[1]} done; run with --merge once every shard has finished")
    else:
        print(_summary(result["manifest"]))
    return result


def _verify(parser, out: str) -> dict:
    from experiments.lib.cli import USAGE_ERROR, fail

    try:
        problems, summary = verify(out)
    except ValueError as err:
        fail(parser.prog, str(err), USAGE_ERROR)
    for line in problems:
        sys.stderr.write(f"{parser.prog}: error: {line}\n")
    if problems:
        raise SystemExit(USAGE_ERROR)
    print(summary)
    return {"problems": problems, "summary": summary}


def _summary(manifest: dict) -> str:
    tok = manifest["tokenizer"]
    lines = [f"tokenizer {tok['spec']} (vocab {tok['vocab_size']}); fingerprint {manifest['fingerprint']}"]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split:10s} {s['documents']:>12,d} documents {s['tokens']:>16,d} tokens "
                     f"{s['bytes']:>16,d} bytes")
    bad = manifest.get("bad_documents", {})
    if bad.get("skipped"):
        lines.append(f"  {bad['skipped']:,d} bad documents skipped, first: {'; '.join(bad['first'][:3])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
