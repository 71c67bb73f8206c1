"""One training run from the command line: ``python -m experiments.train [--preset NAME] [--a.b VALUE ...]``.

Writes the run directory (config.json, metrics.jsonl, orbax checkpoints, result.json and
loss_curve.png) and prints a short sample of generated text at the end. Rerunning the
same command resumes from the latest checkpoint. Every config field can be overridden:
``--help`` lists them with their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.cli import add_config_args, apply_overrides
from lm import data as lm_data
from lm import decode, sharding, train
from lm.config import RunConfig
from lm.presets import PRESETS, get_preset


def plot_loss_curve(run_dir: Path) -> Path:
    """Train and validation loss against tokens, saved as loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = train.read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    va = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train")
    if va:
        ax.plot(*zip(*va), "o-", label="validation")
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title=run_dir.name)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "loss_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sample_text(run: RunConfig, params, prompt: str = "def ", n: int = 120, seed: int = 0) -> str:
    tok = lm_data.tokenizer(run.data)
    ids = jnp.asarray(tok.encode(prompt, add_bos=run.data.add_bos if hasattr(run.data, "add_bos") else False))[None]
    out = decode.generate(run.model, params, ids, jax.random.PRNGKey(seed), max_new_tokens=n, temperature=0.8, top_p=0.95)
    return prompt + tok.decode(out[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="transformer", help=f"model preset, one of {sorted(PRESETS)}")
    parser.add_argument("--out", default="runs/train", help="parent directory of the run directory")
    parser.add_argument("--sample-tokens", type=int, default=120, help="tokens of text to sample at the end")
    parser.add_argument("--mesh-shape", default=None, metavar="D,F,T,E",
                        help="shard the run over a device mesh (data,fsdp,tensor,expert), -1 = the remaining "
                             "devices, e.g. --mesh-shape=-1,4,1,1; default: one device. Multi-host jobs (TPU slice, SLURM, "
                             "SCALELAB_COORDINATOR/NUM_PROCESSES/PROCESS_ID) join automatically")
    add_config_args(parser, default_run())
    return parser


def default_run() -> RunConfig:
    run = RunConfig(name="train")
    return dataclasses.replace(run, data=dataclasses.replace(run.data, seq_len=128, batch_size=16))


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run = dataclasses.replace(default_run(), model=get_preset(args.preset))
        run = apply_overrides(run, args)
        if getattr(args, "cfg:model.vocab_size") is None:  # the model's vocabulary follows the data's tokenizer
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=lm_data.vocab_size(run.data)))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
        parser.error(str(err))
    run_dir = Path(args.out) / run.name
    sharding.maybe_initialize_distributed()  # before anything touches a device
    try:
        mesh = None if args.mesh_shape is None else sharding.make_mesh([int(s) for s in args.mesh_shape.split(",")])
    except ValueError as err:
        parser.error(f"--mesh-shape: {err}")
    train.enable_compilation_cache()
    result = train.train(run, run_dir, mesh=mesh)
    if jax.process_index() != 0:
        return result
    print(json.dumps({k: result[k] for k in ("final_train_loss", "final_val_loss", "final_val_bpb", "tokens", "flops")}, indent=2))
    print(f"loss curve: {plot_loss_curve(run_dir)}")
    if args.sample_tokens > 0:
        _, params = train.load_params(run_dir)
        print("sample:", repr(sample_text(run, params, n=args.sample_tokens)))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
