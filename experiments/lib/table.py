"""The tidy results table of a study: one row per run, read from the run directories; merging shards.

Table columns: ``run``, ``status`` ("complete" | "diverged" | "failed" | "pending"; "failed":
the run's checkpoints could not be read, it is retried on the next call), ``study`` (the
grid fingerprint, so tables of other studies are refused when merging), every config
field by dotted path (``model.d_model``, ``train.steps``, ...), ``N`` (total parameters),
``N_non_embedding``, ``D`` (training tokens), ``C`` (training FLOPs), ``flops_per_token``,
``final_train_loss``, ``final_val_loss``, ``final_val_bpb``, ``loss_at_<C>`` (training
loss interpolated in log FLOPs at the study's FLOP checkpoints; NaN outside the run),
``compile_s``, ``train_s``, ``wall_s`` (the run's wall time in the call that finished it),
``cpu_s`` (the CPU seconds of its process in that call, user + system; NaN in older records),
``resumed_from`` (checkpoint step the run resumed from, empty if none), plus any
per-run ``tags`` the study attaches (e.g. its nominal budget).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.lib import outdir
from experiments.lib.study import SHARD_TABLE, TABLE, Study, StudyError, run_dir
from lm.train import records as lm_records
from lm.model.config import RunConfig
from lm.train.records import flatten


def loss_column(flops: float) -> str:
    """Table column of the training loss at ``flops`` FLOPs, e.g. "loss_at_1e+12"."""
    return f"loss_at_{flops:.4g}"


def interpolate_loss(records: Sequence[Mapping], flops: Sequence[float]) -> list[float]:
    """Training loss at each of ``flops``, linear in log FLOPs between logged records.

    Args:
      records: metrics.jsonl records with "flops" and "train_loss".
      flops: query FLOP counts [q].
    Returns:
      [q] losses; NaN before the first or after the last record.
    """
    pts = sorted((r["flops"], r["train_loss"]) for r in records if r.get("train_loss") is not None)
    if not pts:
        return [math.nan] * len(flops)
    x = np.log([p[0] for p in pts])
    y = np.asarray([p[1] for p in pts], dtype=float)
    out = []
    for c in flops:
        lc = math.log(c)
        out.append(float(np.interp(lc, x, y)) if x[0] - 1e-9 <= lc <= x[-1] + 1e-9 else math.nan)
    return out


def run_row(study: Study, out: str | Path, run: RunConfig) -> dict[str, Any]:
    """The table row of one run, read from its directory (status "pending" if unfinished)."""
    rd = run_dir(out, run)
    row: dict[str, Any] = {"run": run.name, "status": "pending", "study": study.fingerprint()}
    row.update(dict(study.tags.get(run.name, {})))
    row.update({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(run.to_dict()).items()})
    from lm.model.counting import param_count, train_flops_per_token

    counts = param_count(run.model)
    fpt = train_flops_per_token(run.model, run.data.seq_len)
    tokens = run.train.steps * run.data.batch_size * run.data.seq_len
    row.update(N=counts["total"], N_non_embedding=counts["non_embedding"], D=tokens, C=tokens * fpt,
               flops_per_token=fpt)
    result = lm_records.read_result(rd)  # "complete" or "diverged" (also the former failure.json of a divergence)
    failure = lm_records.read_record(rd, lm_records.FAILURE)
    runner_info = lm_records.read_record(rd, lm_records.RUNNER) or {}
    nan = math.nan
    row.update(final_train_loss=nan, final_val_loss=nan, final_val_bpb=nan)
    if result is not None:
        row.update(status=result.get("status", "complete"),
                   **{k: nan if result.get(k) is None else result[k]  # a diverged grouped run writes null
                      for k in ("final_train_loss", "final_val_loss", "final_val_bpb")})
    elif failure is not None:
        row["status"] = "failed" if failure.get("status") == "failed" else "diverged"
    records = lm_records.read_metrics(rd) if (result is not None or failure is not None) else []
    for c, loss in zip(study.loss_at_flops, interpolate_loss(records, study.loss_at_flops)):
        row[loss_column(c)] = loss
    row.update(compile_s=(result or {}).get("compile_s", nan), train_s=(result or {}).get("train_s", nan),
               wall_s=runner_info.get("wall_s", nan), cpu_s=runner_info.get("cpu_s", nan), resumed_from=(result or {}).get("resumed_from"))
    return row



def collect_table(study: Study, out: str | Path, runs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """The tidy results table of ``runs`` (default: the whole grid) read from their directories."""
    runs = study.runs if runs is None else tuple(runs)
    return pd.DataFrame([run_row(study, out, r) for r in runs])


def collect_curves(study: Study, out: str | Path, runs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """Long table of loss curves: run, N, step, tokens, flops, train_loss, val_loss (finished runs)."""
    from lm.model.counting import param_count

    rows = []
    for run in study.runs if runs is None else runs:
        rd = run_dir(out, run)
        if lm_records.read_result(rd) is None:
            continue
        n = param_count(run.model)["total"]
        for r in lm_records.read_metrics(rd):
            rows.append({"run": run.name, "N": n, "step": r["step"], "tokens": r["tokens"], "flops": r["flops"],
                         "train_loss": r.get("train_loss", math.nan), "val_loss": r.get("val_loss", math.nan)})
    return pd.DataFrame(rows, columns=["run", "N", "step", "tokens", "flops", "train_loss", "val_loss"])


def read_table(path: str | Path) -> pd.DataFrame:
    """A results table written by this runner (floats read back bit-exactly)."""
    if int(pd.__version__.split(".")[0]) >= 3:  # round-trip parsing is the default (the option is deprecated)
        return pd.read_csv(path)
    return pd.read_csv(path, float_precision="round_trip")


def study_tables(out: str | Path) -> list[Path]:
    """The results tables under ``out``: results.csv and every shard table."""
    return [p for p in sorted(Path(out).glob("results*.csv")) if p.name == TABLE or SHARD_TABLE.search(p.name)]


def read_study_table(path: str | Path, study: Study) -> pd.DataFrame:
    """A results table of ``study`` (:func:`read_table`), checked.

    Raises:
      StudyError: the file cannot be parsed, lacks the runner's columns, or belongs to
        another study (grid fingerprint). Tables under ``out`` are rebuilt from the run
        directories, so the message says to remove a damaged one.
    """
    try:
        table = read_table(path)
    except FileNotFoundError as err:
        raise StudyError(f"results table {path} does not exist") from err
    except (ValueError, OSError) as err:  # pandas' parser and empty-data errors, bad bytes
        raise StudyError(f"results table {path} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); it is damaged: remove it (the tables under --out "
                         "are rebuilt from the run directories) and rerun") from err
    missing = [c for c in ("run", "status", "study") if c not in table.columns]
    if missing:
        raise StudyError(f"results table {path} lacks the columns {missing}: it is not a table written by this "
                         "runner (or it is damaged); remove it and rerun")
    if len(table) and (table["study"].astype(str) != study.fingerprint()).any():
        raise StudyError(f"table {path} belongs to another study (fingerprint {table['study'].iloc[0]}, "
                         f"this grid's is {study.fingerprint()})")
    return table


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` as CSV through a temporary file and a rename (a kill leaves the old table or the new)."""
    path = Path(path)
    outdir.atomic_write(path, table.to_csv(index=False))
    return path


def merge_tables(tables: Sequence[pd.DataFrame | str | Path], order: Sequence[str] | None = None) -> pd.DataFrame:
    """Merge shard tables into one: one row per run, the finished row where shards disagree.

    Args:
      tables: DataFrames or CSV paths (e.g. every ``results.shard-*.csv``).
      order: run names giving the row order (the grid order); runs missing from every
        table are left out.
    Raises:
      StudyError: two tables hold different finished results for the same run.
    """
    frames = [read_table(t) if isinstance(t, (str, Path)) else t for t in tables]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True).copy()  # copy: one block, not one per column
    rank = both["status"].map({"complete": 0, "diverged": 1}).fillna(2)
    both = both.assign(_rank=rank).sort_values("_rank", kind="stable")
    done = both[both["_rank"] < 2]
    clash = done.groupby("run")["final_val_loss"].nunique(dropna=False)
    if (clash > 1).any():
        raise StudyError(f"shard tables disagree on finished runs {sorted(clash[clash > 1].index)}")
    merged = both.drop_duplicates("run", keep="first").drop(columns="_rank")
    if order is not None:
        pos = {name: i for i, name in enumerate(order)}
        merged = merged[merged["run"].isin(pos)]
        merged = merged.iloc[np.argsort([pos[r] for r in merged["run"]], kind="stable")]
    return merged.reset_index(drop=True)
