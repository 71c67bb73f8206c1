"""Data throughput: ``python -m experiments.bench_data [--tokenizer bpe:32000] [--batches 20]``.

1. prepare_data: the embedded corpus (the standard library's *.py files, ~12 MB) tokenized
   with ``--tokenizer`` (default ``bpe:32000``, trained on the corpus first; its training
   time is printed apart) by ``--workers`` processes: MB of text per second.
2. The grain pipeline reading those prepared shards (memory-mapped, random access by
   piece), packing on, batch 128 x 1024, ``--loader-workers`` worker processes
   (``DataConfig.num_workers``, grain ``mp_prefetch``): tokens per second.
3. The ``transformer_512`` train step here (``experiments.bench_train``, batch
   ``--step-batch`` x 1024): the tokens per second it consumes, and the ratio
   pipeline / step (goal: >= 20x). Compare the pipeline's tokens/s with a GPU step's too.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from experiments.lib.timing import train_step_throughput
from lm.data import pipeline as lm_data
from lm.data import sources, prepare


def prepare_throughput(out: str, tokenizer: str, workers: int) -> dict:
    """Prepare the embedded corpus into ``out``; MB/s of the tokenizing pass (tokenizer trained first)."""
    links = os.path.join(out + "-input")
    os.makedirs(links, exist_ok=True)
    for i, path in enumerate(sources.stdlib_files()):  # the corpus's files, test folders excluded
        link = os.path.join(links, f"{i:05d}.txt")
        if not os.path.exists(link):
            os.symlink(path, link)
    cfg = prepare.PrepareConfig(input=links, tokenizer=tokenizer, validation_fraction=0.01,
                                tokenizer_sample_bytes=64 << 20)
    t0 = time.perf_counter()
    prepare.prepare_tokenizer(cfg, out)
    train_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), _cpu_s()
    manifest = prepare.prepare(cfg, out, workers=workers)["manifest"]
    tok_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    mb = sum(s["bytes"] for s in manifest["splits"].values()) / 1e6
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    return {"mb": mb, "tokens": tokens, "tokenizer_train_s": train_s, "tokenize_s": tok_s, "mb_per_s": mb / tok_s,
            "mb_per_cpu_s": mb / cpu_s}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the tokenizing workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline_throughput(path: str, *, batch: int, seq_len: int, workers: int, batches: int) -> dict:
    """Tokens/s of packed batches from the prepared shards (after warm-up batches from every worker)."""
    cfg = lm_data.DataConfig(source="prepared", path=path, seq_len=seq_len, batch_size=batch, num_workers=workers)
    it = lm_data.make_iterator(cfg, "train")
    for _ in range(max(workers, 1)):
        next(it)
    t0 = time.perf_counter()
    filled = 0.0
    for _ in range(batches):
        filled += float(next(it)["weights"].sum())
    dt = time.perf_counter() - t0
    it.close()
    return {"tokens_per_s": batches * batch * seq_len / dt, "fill": filled / (batches * batch * seq_len)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="bpe:32000")
    p.add_argument("--workers", type=int, default=2, help="prepare_data processes")
    p.add_argument("--loader-workers", type=int, default=2, help="worker processes of the grain pipeline")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--step-batch", type=int, default=2, help="sequences per measured train step")
    p.add_argument("--out", default=None, help="prepared directory (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "prepared")
        prep = prepare_throughput(out, args.tokenizer, args.workers)
        print(f"prepare_data {args.tokenizer}: {prep['mb']:.1f} MB -> {prep['tokens'] / 1e6:.2f}M tokens; "
              f"tokenizer trained in {prep['tokenizer_train_s']:.1f} s; tokenized in {prep['tokenize_s']:.1f} s "
              f"with {args.workers} workers = {prep['mb_per_s']:.2f} MB/s ({prep['mb_per_cpu_s']:.2f} MB per CPU-second)")
        pipe = pipeline_throughput(out, batch=args.batch, seq_len=args.seq_len, workers=args.loader_workers,
                                   batches=args.batches)
        print(f"grain pipeline (prepared shards, packing, batch {args.batch}x{args.seq_len}, "
              f"{args.loader_workers} workers): "
              f"{pipe['tokens_per_s']:,.0f} tokens/s (rows {100 * pipe['fill']:.1f}% filled)")
    step = train_step_throughput("transformer_512", args.seq_len, args.step_batch, repeats=3)
    ratio = pipe["tokens_per_s"] / step["tokens_per_s"]
    print(f"transformer_512 train step here (batch {args.step_batch}x{args.seq_len}): {step['tokens_per_s']:,.0f} "
          f"tokens/s consumed -> pipeline / step = {ratio:,.0f}x (goal >= 20x)")
    return {"prepare": prep, "pipeline": pipe, "step": step, "ratio": ratio}


if __name__ == "__main__":
    main()
