"""Prepare a corpus once: ``python -m experiments.prepare_data --input SPEC --out DIR [options]``.

Tokenizes every document once, in worker processes, into token shards that the training
pipeline memory-maps and reads by random access (fixed-width uint16/uint32 token files
plus a per-document table; format in :mod:`lm.prepare`), and writes ``DIR/manifest.json``
(documents, tokens and bytes per split, the tokenizer, the source spec, a fingerprint).
Then train on it with ``python -m experiments.train --data.source prepared --data.path DIR``
or any study's ``--data DIR``.

Inputs (``--input``): a glob or a directory of text / jsonl / jsonl.gz / parquet files, or
``tfds:NAME[:VERSION]/SPLIT`` (with ``--tfds-data-dir``). Tokenizers (``--tokenizer``):
``byte`` (default), ``bpe:VOCAB`` (byte-level BPE trained on a sample of the training
split), or the path of a ``tokenizer.json`` or a SentencePiece ``.model``.

Rerunning the same command after a kill finishes the work without redoing finished units.
A job array runs ``--shard i/n`` on n machines (same --out on a shared disk), then one
``--merge`` writes the manifest.
"""

from __future__ import annotations

import argparse
import sys
import time

from lm import prepare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.prepare_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="glob, directory, or tfds:NAME[:VERSION]/SPLIT (not needed with --merge)")
    p.add_argument("--out", required=True, help="the prepared directory")
    p.add_argument("--tokenizer", default="byte", help="byte | bpe:VOCAB | PATH (tokenizer.json or .model)")
    p.add_argument("--text-key", default="text", help="text field of jsonl / parquet / TFDS records")
    p.add_argument("--validation-fraction", type=float, default=0.01, help="share of documents held out")
    p.add_argument("--split-seed", type=int, default=0, help="key of the document hash deciding the split")
    p.add_argument("--tokenizer-sample-mb", type=float, default=256.0,
                   help="MB of training text the bpe:VOCAB tokenizer is learned from")
    p.add_argument("--shard", default=None, metavar="I/N", help="prepare only units I, I+N, ... (job arrays)")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes")
    p.add_argument("--merge", action="store_true", help="write the manifest once every --shard job has finished")
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


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.merge:
            manifest = prepare.merge(args.out)
            print(_summary(manifest))
            return {"manifest": manifest}
        if not args.input:
            raise ValueError("--input is required (unless --merge)")
        cfg = prepare.PrepareConfig(input=args.input, tokenizer=args.tokenizer, text_key=args.text_key,
                                    validation_fraction=args.validation_fraction, split_seed=args.split_seed,
                                    tfds_data_dir=args.tfds_data_dir,
                                    tokenizer_sample_bytes=max(1, int(args.tokenizer_sample_mb * 2**20)))
        shard = _shard(args.shard)
        t0 = time.perf_counter()
        result = prepare.prepare(cfg, args.out, shard=shard, workers=args.workers,
                                 progress=lambda d, n: print(f"\runits {d}/{n}", end="", file=sys.stderr))
        print(file=sys.stderr)
    except ValueError as err:
        parser.error(str(err))
    print(f"{result['done_now']} units tokenized in {time.perf_counter() - t0:.1f} s "
          f"({result['units'] - result['done_now']} already done)")
    if result["manifest"] is None:
        print(f"shard {shard[0]}/{shard[1]} done; run with --merge once every shard has finished")
    else:
        print(_summary(result["manifest"]))
    return result


def _summary(manifest: dict) -> str:
    tok = manifest["tokenizer"]
    lines = [f"tokenizer {tok['spec']} (vocab {tok['vocab_size']}); fingerprint {manifest['fingerprint']}"]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split:10s} {s['documents']:>12,d} documents {s['tokens']:>16,d} tokens "
                     f"{s['bytes']:>16,d} bytes")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
