"""One training run from the command line: ``python -m experiments.train [--preset NAME] [--a.b VALUE ...]``.

Writes the run directory (config.json, metrics.jsonl, orbax checkpoints, result.json,
loss_curve.png and a TensorBoard event file: ``tensorboard --logdir runs/``) and prints a
short sample of generated text at the end. Rerunning the same command resumes from the
latest intact checkpoint; a run directory holding another config, or trained on another
corpus (its corpus.json records the corpus fingerprint, :mod:`lm.data.check`), is refused
(the message names the fields that differ, or both fingerprints) unless ``--overwrite``
starts the run afresh. The data is checked before step 0: a damaged prepared corpus (its
manifest, a missing or cut-short shard), an empty split, or a ``--model.vocab_size`` below
the tokenizer's is one line naming the file or field. Every config field can be overridden:
``--help`` says what each one means and its default. The run directory is locked while the
command runs (a second one on it is refused, naming the first's PID); SIGTERM or Ctrl-C stop
training at the next step with a checkpoint saved. Errors and stops are one line on stderr,
with the exit codes of ``experiments.lib.cli.EXIT_CODES`` (listed by ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.lib import outdir
from experiments.lib.cli import EXIT_CODES, RUN_FAILED, OneLineParser, add_config_args, apply_overrides, fail, training
from experiments.lib.figures import plot_loss_curve
from experiments.lib.progress import SweepProgress
from lm.data import pipeline as lm_data
from lm.train import compiled, multihost, records, run_lock, sharding, solo as train
from lm.data import check
from lm.model import decode
from lm.train.checkpoint import CheckpointError
from lm.model.config import RunConfig
from lm.model.config_schema import migrate
from lm.model.presets import PRESETS, get_preset
from lm.train.tensorboard import EVENT_PREFIX


def sample_text(run: RunConfig, params, prompt: str = "def ", n: int = 120, seed: int = 0) -> str:
    tok = lm_data.tokenizer(run.data)
    ids = jnp.asarray(tok.encode(prompt, add_bos=run.data.add_bos if hasattr(run.data, "add_bos") else False))[None]
    out = decode.generate(run.model, params, ids, jax.random.PRNGKey(seed), max_new_tokens=n, temperature=0.8, top_p=0.95)
    return prompt + tok.decode(out[0])


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m experiments.train", description=__doc__, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="transformer", help=f"model preset, one of {sorted(PRESETS)}")
    parser.add_argument("--out", default="runs/train", help="parent directory of the run directory <out>/<name>")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the run afresh: delete the run directory's records (config.json, metrics, "
                             "checkpoints, result, plots, TensorBoard events) first; without it a run directory "
                             "holding another config is refused")
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


# Fields that do not change what is trained: a rerun may change them freely.
RESUME_FREE_FIELDS = ("train.progress",)
# What lm.train.solo.train and this command write into a run directory (--overwrite removes these only).
RUN_RECORDS = (*records.RUN_FILES, "corpus.json.tmp", "result.json.tmp", "checkpoints", "loss_curve.png")
# Not among them: the lock file (lm.train.run_lock.LOCK), held by the command that overwrites.


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run that :func:`build_parser`'s parsed ``args`` ask for (ValueError for a bad value)."""
    run = dataclasses.replace(default_run(), model=get_preset(args.preset))
    run = apply_overrides(run, args)
    if getattr(args, "cfg:model.vocab_size") is None:  # the model's vocabulary follows the data's tokenizer
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=lm_data.vocab_size(run.data)))
    return run


def check_run_dir(run: RunConfig, run_dir: Path, overwrite: bool) -> None:
    """Refuse (ValueError) a run directory holding another run, unless ``overwrite``; writes nothing.

    Another run is a config.json that differs from ``run`` in any field but
    :data:`RESUME_FREE_FIELDS` (the message names the fields), a config.json that cannot be
    read, or checkpoints without a config.json.
    """
    if not run.name:
        raise outdir.OutputError("--name='': a run needs a name (its directory under --out)")
    outdir.check_writable_dir(run_dir, "--out/--name")
    if overwrite:
        return
    hint = "rerun with --overwrite to start this run afresh, or choose another --name"
    try:
        old = outdir.read_json_record(run_dir / records.CONFIG, "the run's config")
    except outdir.OutputError as err:
        raise outdir.OutputError(f"{err}; {hint}") from err
    if old is None:
        if (run_dir / "checkpoints").exists():
            raise outdir.OutputError(f"run directory {run_dir} holds checkpoints but no config.json; {hint}")
        return
    try:  # a config of an earlier schema (lm/model/config_schema.py) reads as today
        old = RunConfig.from_dict(old).to_dict()
    except (ValueError, TypeError):
        try:
            old = migrate(old)  # the differences below say what no longer loads
        except ValueError as err:  # a schema this scalelab cannot read (written by a newer one)
            raise outdir.OutputError(f"{run_dir / records.CONFIG}: {err}; {hint}") from err
    diff = outdir.config_differences(old, run.to_dict(), ignore=RESUME_FREE_FIELDS)
    if diff:
        raise outdir.OutputError(f"run directory {run_dir} holds a run with another config ({'; '.join(diff)}); "
                                 f"{hint}")


def check_run_data(run: RunConfig, run_dir: Path, overwrite: bool) -> None:
    """Refuse (ValueError, one line) data the run cannot train on, or a run directory trained on
    another corpus unless ``overwrite`` (:func:`lm.data.check.check_run`); writes nothing."""
    try:
        check.check_run(run, None if overwrite else run_dir)
    except check.CorpusMismatchError as err:
        raise outdir.OutputError(f"{err}; rerun with --overwrite to start this run afresh on the new corpus, "
                                 "or restore the old one (nothing was changed)") from err


def start_afresh(run_dir: Path) -> list[str]:
    """``--overwrite``: remove the run's records (:data:`RUN_RECORDS`, TensorBoard event files and
    the temporary files of a write that a kill cut short)."""
    names = (*RUN_RECORDS, *sorted(p.name for p in run_dir.glob(f"{EVENT_PREFIX}*")),
             *sorted(p.name for p in run_dir.glob(".*.tmp")))
    return outdir.remove_entries(run_dir, names) if run_dir.is_dir() else []


def main(argv=None) -> dict:
    """Train one run; a refused input, a failed or a stopped run is one line on stderr and a nonzero exit.

    Exit codes (:data:`experiments.lib.cli.EXIT_CODES`): 2 (:data:`~experiments.lib.cli.USAGE_ERROR`)
    for anything refused before training (bad flag or value, unusable ``--out``, a run directory
    holding another config, trained on another corpus or locked by another process, a damaged
    record or prepared corpus, an empty split); 1 (:data:`~experiments.lib.cli.RUN_FAILED`) for a
    run that diverged, whose checkpoints cannot be read, or that ran out of disk space; 75
    (:data:`~experiments.lib.cli.PREEMPTED`) after SIGTERM (Ctrl-C: the same stop, then SIGINT).
    Nothing is written in the first case.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run = run_config(args)
        if args.sample_tokens < 0:
            raise ValueError(f"--sample-tokens={args.sample_tokens}: must be >= 0")
        run_dir = Path(args.out) / run.name
        outdir.check_writable_dir(args.out)
        check_run_dir(run, run_dir, args.overwrite)
        check_run_data(run, run_dir, args.overwrite)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
        fail(parser.prog, str(err))
    multihost.maybe_initialize_distributed()  # before anything touches a device
    try:
        mesh = None if args.mesh_shape is None else sharding.make_mesh([int(s) for s in args.mesh_shape.split(",")])
    except ValueError as err:
        fail(parser.prog, f"--mesh-shape={args.mesh_shape}: {err}")
    primary = jax.process_index() == 0
    with training(parser.prog), run_lock.hold(run_dir) if primary else contextlib.nullcontext():
        try:  # again under the lock: another process may have written the directory since
            check_run_dir(run, run_dir, args.overwrite)
            check_run_data(run, run_dir, args.overwrite)
        except ValueError as err:
            fail(parser.prog, str(err))
        return _train_and_report(parser.prog, run, run_dir, mesh, args)


def _train_and_report(prog: str, run: RunConfig, run_dir: Path, mesh, args: argparse.Namespace) -> dict:
    """:func:`main` once the run directory is checked and locked: train, then print the result,
    the loss curve's path and a sample."""
    if args.overwrite and jax.process_index() == 0:
        gone = start_afresh(run_dir)
        if gone:
            print(f"--overwrite: removed {', '.join(gone)} from {run_dir}; training afresh")
    compiled.enable_compilation_cache()
    bar = SweepProgress([run], 0, 1, enabled=run.train.progress and jax.process_index() == 0)
    bar.start([run])
    try:
        result = train.train(run, run_dir, mesh=mesh, progress=bar)
        bar.finish([run])
    except train.NonFiniteLossError as err:
        fail(prog, f"the run diverged: {err}", RUN_FAILED)
    except CheckpointError as err:
        fail(prog, f"{err} (rerun with --overwrite to start afresh)", RUN_FAILED)
    finally:
        bar.close()
    if jax.process_index() != 0:
        return result
    print(json.dumps({k: result[k] for k in ("final_train_loss", "final_val_loss", "final_val_bpb", "tokens", "flops")}, indent=2))
    print(f"loss curve: {plot_loss_curve(records.read_metrics(run_dir), run_dir, run_dir.name)}")
    if args.sample_tokens > 0:
        _, params = train.load_params(run_dir)
        print("sample:", repr(sample_text(run, params, n=args.sample_tokens)))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
