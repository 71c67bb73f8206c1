"""Training: loss, AdamW step, evaluation, metrics, NaN guard, resumable runs.

The compiled train step takes the learning rate as an argument (computed on the host from
the schedule), so runs that differ only in schedule, length or peak learning rate share
one compiled program; :data:`STEP_CACHE` reuses it across runs in a process and JAX's
persistent compilation cache across processes (:func:`enable_compilation_cache`).

Axis letters: b batch, t time, v vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from lm import data as lm_data
from lm import model as lm_model
from lm import parametrization
from lm.checkpoint import Checkpointer, CheckpointError, decode_bytes
from lm.config import ModelConfig, OptimizerConfig, RunConfig
from lm.flops import param_count, train_flops_per_token
from lm.schedules import lr_multiplier



class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/inf; the last good checkpoint is kept."""


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache (default ``$SCALELAB_JAX_CACHE`` or ~/.cache)."""
    path = str(path or os.environ.get("SCALELAB_JAX_CACHE", Path.home() / ".cache" / "scalelab" / "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


# ----------------------------------------------------------------------------- loss


def cross_entropy(
    logits: Float[Array, "b t v"], targets, weights
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """Weighted mean token cross-entropy (nats), its weight sum, and mean logsumexp^2."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    denom = jnp.maximum(weights.sum(), 1.0)
    nll = ((lse - target_logit) * weights).sum() / denom
    z = (jnp.square(lse) * weights).sum() / denom
    return nll, weights.sum(), z


def loss_fn(model_cfg: ModelConfig, z_loss: float, params, batch, rng=None) -> tuple[Array, dict]:
    """Training objective and metrics.

    cross-entropy + z_loss * mean(logsumexp^2) of the output logits (PaLM, Chowdhery et
    al. 2022) + the MoE auxiliary losses summed over MoE blocks with their weights:
    Switch load balance (Fedus et al. 2022) and router z-loss (Zoph et al. 2022, ST-MoE).
    """
    logits, moe_aux = lm_model.forward_with_aux(
        model_cfg, params, batch["tokens"], batch["segment_ids"], batch["positions"], rng
    )
    nll, count, z = cross_entropy(logits, batch["targets"], batch["weights"])
    total = nll + z_loss * z
    metrics = {"loss": nll, "z_loss": z, "tokens": count}
    if moe_aux:
        lb = sum(a["load_balance_loss"] for a in moe_aux.values())
        rz = sum(a["router_z_loss"] for a in moe_aux.values())
        total = total + model_cfg.moe_load_balance_weight * lb + model_cfg.moe_router_z_weight * rz
        metrics["moe"] = {
            "load_balance_loss": lb,
            "router_z_loss": rz,
            "layers": {str(i): {k: a[k] for k in ("dropped_fraction", "tokens_per_expert", "router_entropy")}
                       for i, a in moe_aux.items()},
        }
    return total, metrics


# ------------------------------------------------------------------------ optimiser


def weight_decay_mask(params, opt: OptimizerConfig):
    """True for parameters that get weight decay: matrices, not norms/biases/embeddings."""

    def decide(path, leaf):
        if opt.decay_all:
            return True
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        if "embed" in names and not opt.decay_embeddings:
            return False
        return leaf.ndim >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(opt: OptimizerConfig, params, model: ModelConfig | None = None) -> optax.GradientTransformation:
    """The Adam direction with gradient clipping; learning rate and decay are applied by the step.

    The step computes p - lr * (adam_update + wd * p * mask), which is ``optax.adamw``
    with ``learning_rate=lr`` and ``weight_decay=wd`` (decoupled decay, Loshchilov &
    Hutter 2019). Keeping lr and wd out of the transformation makes them arguments of the
    compiled step, so runs that differ only in them share one program (and can be vmapped).
    A μP ``model`` multiplies each parameter's Adam update by its lr multiplier
    (``lm/parametrization.py``; the state is unchanged; weight decay stays lr * wd * p).
    """
    del params  # the state of clip + adam depends only on the parameter shapes, given at init
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
    tx = optax.chain(*parts)
    if model is not None and model.parametrization == "mup":  # μP hook (issue 19)
        tx = parametrization.scale_learning_rates(tx, lm_model.param_rules(model))
    return tx


def apply_update(params, updates, lr, weight_decay, mask):
    """AdamW's parameter update p - lr * (u + wd * p), decay only where ``mask`` is True."""
    return jax.tree.map(
        lambda p, u, m: p - lr * (u.astype(p.dtype) + weight_decay * p if m else u.astype(p.dtype)),
        params, updates, mask,
    )


def init_state(run: RunConfig, rng: jax.Array | None = None) -> dict:
    """Fresh training state {"step", "params", "opt_state"}."""
    rng = jax.random.PRNGKey(run.train.seed) if rng is None else rng
    params = lm_model.init_params(run.model, rng)
    tx = make_optimizer(run.optimizer, params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def make_train_step(run: RunConfig):
    """The (uncompiled) train step: (state, batch, lr, weight_decay=None) -> (state, metrics).

    ``lr`` and ``weight_decay`` (None: the config's) are traced scalars. A non-finite loss
    or gradient leaves the state unchanged and sets metrics["finite"] to False (the host
    stops the run).
    """
    model_cfg, opt, z_loss = run.model, run.optimizer, run.train.z_loss
    jitter = model_cfg.moe_every > 0 and model_cfg.moe.router_jitter > 0

    def step(state, batch, lr, weight_decay=None):
        params = state["params"]
        wd = opt.weight_decay if weight_decay is None else weight_decay
        tx = make_optimizer(opt, params, model_cfg)
        rng = jax.random.fold_in(jax.random.PRNGKey(run.train.seed), state["step"]) if jitter else None
        (_, metrics), grads = jax.value_and_grad(
            lambda p: loss_fn(model_cfg, z_loss, p, batch, rng), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = apply_update(params, updates, lr, wd, weight_decay_mask(params, opt))
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(opt_state, state["opt_state"]),
        }
        return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite}

    return step


def _step_key(run: RunConfig, batch_shape) -> tuple:
    opt = dataclasses.replace(run.optimizer, learning_rate=1.0, weight_decay=0.0)
    return (run.model, opt, run.train.z_loss, tuple(batch_shape))


STEP_CACHE: dict[tuple, Any] = {}
EVAL_CACHE: dict[tuple, Any] = {}


def compiled_train_step(run: RunConfig, state, batch) -> tuple[Any, float]:
    """The compiled train step for this run's shapes, and the seconds spent compiling it (0 if reused).

    Called as ``compiled(state, batch, lr, weight_decay)`` with float32 scalars.
    """
    key = _step_key(run, batch["tokens"].shape)
    if key in STEP_CACHE:
        return STEP_CACHE[key], 0.0
    t0 = time.perf_counter()
    zero = jnp.float32(0.0)
    compiled = jax.jit(make_train_step(run), donate_argnums=0).lower(state, batch, zero, zero).compile()
    STEP_CACHE[key] = compiled
    return compiled, time.perf_counter() - t0


def compiled_eval_step(model_cfg: ModelConfig, params, batch) -> tuple[Any, float]:
    key = (model_cfg, tuple(batch["tokens"].shape))
    if key in EVAL_CACHE:
        return EVAL_CACHE[key], 0.0

    def evaluate(params, batch):
        logits = lm_model.forward(model_cfg, params, batch["tokens"], batch["segment_ids"], batch["positions"])
        nll, count, _ = cross_entropy(logits, batch["targets"], batch["weights"])
        return nll * count, count

    t0 = time.perf_counter()
    compiled = jax.jit(evaluate).lower(params, batch).compile()
    EVAL_CACHE[key] = compiled
    return compiled, time.perf_counter() - t0


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's state and batches live: one device (mesh None) or a ``lm.sharding`` mesh.

    Every choice that differs between the two lives here, so ``train`` and ``evaluate``
    have one code path.
    """

    run: RunConfig
    mesh: Any = None

    @property
    def _sharding(self):
        from lm import sharding  # lm.sharding imports this module

        return sharding

    def init_state(self):
        return init_state(self.run) if self.mesh is None else self._sharding.init_sharded_state(self.run, self.mesh)

    def iterator(self, split: str):
        if self.mesh is None:
            return lm_data.make_iterator(self.run.data, split)
        return self._sharding.make_host_iterator(self.run, self.mesh, split)

    def batch(self, host_batch: dict) -> dict:
        if self.mesh is None:
            return _to_device(host_batch)
        return self._sharding.global_batch(host_batch, self.mesh, self.run.data.batch_size)

    def train_step(self, state, batch):
        if self.mesh is None:
            return compiled_train_step(self.run, state, batch)
        return self._sharding.compiled_sharded_train_step(self.run, self.mesh, state, batch)

    def eval_step(self, params, batch):
        if self.mesh is None:
            return compiled_eval_step(self.run.model, params, batch)
        return self._sharding.compiled_sharded_eval_step(self.run.model, self.mesh, params, batch)

    def data_state_to_save(self, it) -> dict:
        return it.get_state() if self.mesh is None else self._sharding.gather_data_states(it.get_state())

    def data_state_restored(self, saved: dict) -> dict:
        return decode_bytes(saved) if self.mesh is None else self._sharding.local_data_state(saved)


def evaluate(run: RunConfig, params, num_batches: int | None = None, *, mesh=None) -> tuple[dict, float]:
    """Validation loss (nats/target) and bits per byte on the first batches of the held-out split.

    With a ``mesh`` (``lm.sharding``) every host reads its rows of each global batch.
    Returns the metrics and the seconds spent compiling.
    """
    place = Placement(run, mesh)
    it = place.iterator("validation")
    total, count, compile_s = 0.0, 0.0, 0.0
    for _ in range(num_batches or run.train.eval_batches):
        batch = place.batch(next(it))
        fn, c = place.eval_step(params, batch)
        compile_s += c
        s, n = fn(params, batch)
        total += float(s)
        count += float(n)
    it.close()
    loss = total / max(count, 1.0)
    bpb = lm_data.bits_per_byte(loss, lm_data.dataset_info(run.data)["targets_per_byte"])
    return {"val_loss": loss, "val_bpb": bpb}, compile_s


def _to_device(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items() if k in ("tokens", "targets", "weights", "segment_ids", "positions")}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records written after ``step`` (a killed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(run: RunConfig, run_dir: str | Path, *, progress=None, mesh=None) -> dict:
    """Train one run to completion, resuming from the latest checkpoint in ``run_dir``.

    Writes ``config.json``, ``metrics.jsonl`` (one record per log step and eval, with the
    cumulative FLOPs), orbax checkpoints, and ``result.json`` when finished.

    Args:
      run: the run's configuration.
      run_dir: its directory (created).
      progress: optional callable(step, total, metrics) for an outer progress display;
        by default a tqdm bar is shown when ``run.train.progress``.
      mesh: a ``lm.sharding.make_mesh`` mesh to shard the run over (several devices or
        hosts); None trains on the default device. Only process 0 writes the run files.

    Returns:
      The result summary (also written to ``result.json``).

    Raises:
      NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0  # multi-host: one writer of the run files
    if primary:
        (run_dir / "config.json").write_text(run.to_json())
    metrics_path = run_dir / "metrics.jsonl"
    tc = run.train
    seq_len, batch_size = run.data.seq_len, run.data.batch_size
    tokens_per_step = seq_len * batch_size
    flops_per_token = train_flops_per_token(run.model, seq_len)
    counts = param_count(run.model)

    ckpt = Checkpointer(run_dir, max_to_keep=tc.keep_checkpoints)
    place = Placement(run, mesh)
    state = place.init_state()
    train_it = place.iterator("train")
    resumed_from = None
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(None, state)
        train_it.set_state(place.data_state_restored(data_state))
        resumed_from = int(state["step"])
        if primary:
            _truncate_metrics(metrics_path, resumed_from)
    elif tc.init_from is not None:
        src_dir, src_step = tc.init_from
        src = Checkpointer(src_dir, max_to_keep=None, read_only=True)
        state, data_state, _ = src.restore(int(src_step), state)
        train_it.set_state(place.data_state_restored(data_state))
        src.close()
        if primary:
            metrics_path.write_text("")
    elif primary:
        metrics_path.write_text("")

    start = int(state["step"])
    compile_s, t_train = 0.0, 0.0
    step_fn = None
    bar = None
    if progress is None and tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=run.name, unit="step", dynamic_ncols=True, leave=False)
    window_loss, window_n = 0.0, 0
    last_train_loss = float("nan")
    last_eval: dict = {}

    def save(step):
        meta = {"step": step, "config": run.to_dict()}
        ckpt.save(step, state, place.data_state_to_save(train_it), meta)

    with open(metrics_path if primary else os.devnull, "a") as log:
        for step in range(start, tc.steps):
            batch = place.batch(next(train_it))
            if step_fn is None:
                step_fn, c = place.train_step(state, batch)
                compile_s += c
            lr = run.optimizer.learning_rate * lr_multiplier(run.schedule, step, tc.steps)
            t0 = time.perf_counter()
            state, m = step_fn(state, batch, jnp.float32(lr), jnp.float32(run.optimizer.weight_decay))
            loss = float(m["loss"])
            t_train += time.perf_counter() - t0
            if not bool(m["finite"]):
                log.flush()
                last = ckpt.latest_step()
                raise NonFiniteLossError(
                    f"run {run.name!r}: loss or gradient became non-finite at step {step} "
                    f"(loss={loss}, grad_norm={float(m['grad_norm'])}); the update was not applied and the "
                    f"last good checkpoint (step {last}) in {ckpt.directory} is kept"
                )
            window_loss += loss
            window_n += 1
            done = step + 1
            record_due = done % tc.log_every == 0 or done == tc.steps
            eval_due = done % tc.eval_every == 0 or done == tc.steps
            if record_due or eval_due:
                record = {
                    "step": done,
                    "tokens": done * tokens_per_step,
                    "flops": done * tokens_per_step * flops_per_token,
                    "lr": lr,
                    "train_loss": window_loss / max(window_n, 1),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens_per_s": tokens_per_step * window_n / max(t_train, 1e-9) if window_n else None,
                }
                if "moe" in m:
                    record["moe"] = jax.tree.map(lambda a: np.asarray(a).tolist(), m["moe"])
                last_train_loss = record["train_loss"]
                window_loss, window_n = 0.0, 0
                if eval_due:
                    last_eval, c = evaluate(run, state["params"], mesh=mesh)
                    compile_s += c
                    record.update(last_eval)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if done % tc.checkpoint_every == 0 or done == tc.steps:
                save(done)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_step * (done - start) / max(t_train, 1e-9):.0f}")
                bar.update(1)
            if progress is not None:
                progress(done, tc.steps, {"loss": loss})
    if bar is not None:
        bar.close()
    ckpt.close()
    train_it.close()
    if not last_eval:  # resumed at the very end: evaluate the final parameters
        last_eval, c = evaluate(run, state["params"], mesh=mesh)
        compile_s += c
    history = read_metrics(run_dir)
    if math.isnan(last_train_loss):
        last_train_loss = next((r["train_loss"] for r in reversed(history) if "train_loss" in r), float("nan"))
    result = {
        "name": run.name,
        "status": "complete",
        "steps": tc.steps,
        "tokens": tc.steps * tokens_per_step,
        "flops": tc.steps * tokens_per_step * flops_per_token,
        "flops_per_token": flops_per_token,
        "params_total": counts["total"],
        "params_non_embedding": counts["non_embedding"],
        "final_train_loss": last_train_loss,
        "final_val_loss": last_eval["val_loss"],
        "final_val_bpb": last_eval["val_bpb"],
        "compile_s": compile_s,
        "train_s": t_train,
        "resumed_from": resumed_from,
    }
    if primary:  # atomic: a run killed mid-write never leaves a truncated result.json
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, run_dir / "result.json")
    return result


def load_params(run_dir: str | Path, step: int | None = None) -> tuple[RunConfig, dict]:
    """The config and parameters of a run from its checkpoints (latest step by default)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir} has no config.json: not a run directory")
    run = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    ckpt = Checkpointer(run_dir, max_to_keep=None, read_only=True)
    state, _, _ = ckpt.restore(step, init_state(run))
    ckpt.close()
    return run, state["params"]

