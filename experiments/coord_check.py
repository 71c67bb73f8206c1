"""Coordinate check: activation sizes against width after a few Adam steps, under SP and μP.

``python -m experiments.coord_check [--preset smoke|default] [--family NAME|all] [--learning-rate LR]
[--head family|tied|untied] [--zero-readout | --random-readout] [--zero-query] [--out DIR]``

Yang et al. 2022 (Tensor Programs V, arXiv 2203.03466, Sec. 5 and Fig. 5): train models of
widths base x {1, 2, 4, 8} for a few steps at one learning rate (large, but not so large
that the base model's activations grow several-fold) and record, on a fixed batch, the RMS
of every module's output after each step and the RMS of its change since step 0. Under μP
(``lm/model/parametrization.py``) every curve is flat in width; under SP the hidden activations
and their updates grow with width, and so do the logits' updates.

Modules: ``embedding`` (sqrt(d) E[tokens]), per block ``block_i/mixer``, ``block_i/ff``
(MLP or MoE output) and ``block_i`` (the residual stream after the block), ``logits``, and
``logits/readout``: the part of the logits' change made by the readout's own update,
h_t (W_t - W_0) times the output multiplier (h the final norm's output). The logits' change
is exactly that part plus (h_t - h_0) W_0 times the multiplier: under μP the first is Θ(1)
and the second's random part falls as m^-1/2 with the vanishing readout init W_0 (measured
at smoke, transformer, 4 steps, random readout: RMS 0.64 against the readout's part's 0.09 at
the base width, log-log slope -0.42, while the readout's part stays flat, +0.02), so with a
random readout the logits' ``update_rms`` falls with width (slope -0.38) until the learned part
dominates. The μP default for an untied head is therefore TP5's zero readout
(``model.mup_zero_readout``; ``--random-readout`` measures the former default); a tied head is
the embedding and keeps its random init (its ``logits/readout`` is flat, its whole update is
not: README, μP). Each (parametrization, family, width) is averaged over ``seeds`` (init and
data order): the seeds train stacked, each on its own data order, in one train step from
``lm.train.compiled`` on a one-device mesh. One program of each kind (init, train step, activations)
per (family, width) serves SP and μP: it is built from SP's config and takes the model's multipliers
as inputs (``lm.model.parametrization.Multipliers``: init, lr, output and score-scale multipliers;
SP's all 1). A μP base model equal to SP's (tied head, random readout) is measured once.

Outputs under ``--out`` (default ``runs/coord_check/<preset>``): coord_check.csv (columns
parametrization, family, width, step, module, rms, update_rms), slopes.csv (log-log slope
of the last step's rms and update_rms against width per module), report.md and
coord_check_<family>.png/svg (rows: SP, μP; columns: activation RMS at steps 0..n, then
the update RMS at the last step; one line per module).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from experiments import lib
from lm.train import compiled, sharding
from lm.data import pipeline as lm_data
from lm.model import network as lm_model
from lm.model import parametrization
from lm.train import step as lm_step
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig
from lm.data.config import DataConfig
from lm.model.presets import FAMILIES, PARAMETRIZATIONS
from lm.model.presets import mup_family_model as family_model

@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
    """Widths base x multipliers, depth, steps, learning rate, batch shape, seeds."""

    base_width: int
    multipliers: tuple[int, ...] = (1, 2, 4, 8)
    num_layers: int = 2
    steps: int = 4
    learning_rate: float = 3e-3
    seq_len: int = 64
    batch_size: int = 8
    seeds: int = 2


# The learning rate keeps the few steps in the regime the check is about: at 1e-2 the base
# model's activations already grow several-fold in 5 steps (Hawk, default preset, width 64:
# last residual stream RMS 1.50 -> 7.59; at 3e-3: 1.50 -> 2.61), the narrow models grow a
# little faster than the wide ones, and the μP curves of Hawk, MLA and MoE bend for that
# reason (measured slopes: Hawk block_1/ff -0.15 at the default preset, MoE block_0/ff -0.14
# at smoke; at 3e-3 every family's hidden slopes are within +-0.09 at smoke).
# Small batches on purpose: Tensor Programs' limit is width -> infinity at a fixed batch, and
# an Adam update's alignment with the layer's input (what μP's 1/fan_in corrects) holds only
# when the width exceeds the rank of the gradient (the tokens per batch); with as many tokens
# as the base width the narrow models sit before the limit and the curves bend.
PRESETS = {
    "smoke": Preset(base_width=32, num_layers=2, steps=4, seq_len=32, batch_size=2, seeds=8),
    "default": Preset(base_width=64, num_layers=3, steps=5, seq_len=64, batch_size=2, seeds=4),
}


# XLA's backend optimisation level 0 for every program here (init, train step, activations): each
# runs a few times, and it halves the compile (transformer, width 128: 9.6 s -> 4.4 s of CPU)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _rms(x, axis=None) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axis))


def _head(cfg: ModelConfig, params) -> jax.Array:
    """The readout matrix [d, v]: the untied head or the embedding's transpose."""
    return params["embed"].T if cfg.tie_embeddings else params["head"]


def activations(cfg: ModelConfig, params, tokens, head0=None, multipliers=None) -> dict[str, jax.Array]:
    """{module: activation} of one forward pass (Flax ``capture_intermediates``).

    With ``head0`` (the readout matrix at init, [d, v]) also ``logits/readout``: the part of
    the logits' change that the readout's own update makes, h (W - W_0) times the output
    multiplier (before a soft-cap), h the final norm's output [b, t, d]. ``multipliers``
    (``parametrization.Multipliers`` of [] arrays, ``cfg`` SP's config) replace ``cfg``'s μP ones.
    """
    (logits, _, _), state = lm_model.LanguageModel(cfg, multipliers).apply(
        {"params": params}, tokens, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    out = {"embedding": jnp.take(params["embed"], tokens, axis=0) * jnp.sqrt(cfg.d_model)}
    for i in range(cfg.num_layers):
        block = inter[f"block_{i}"]
        for name, sub in block.items():
            if name == "__call__" or name.startswith("norm"):
                continue
            value = sub["__call__"][0]
            out[f"block_{i}/{'ff' if name in ('mlp', 'moe') else 'mixer'}"] = value[0] if isinstance(value, tuple) else value
        out[f"block_{i}"] = block["__call__"][0][0]
    out["logits"] = logits
    if head0 is not None:
        h = inter["final_norm"]["__call__"][0]
        mult = (parametrization.output_multiplier(cfg) or 1.0) if multipliers is None else multipliers.output
        out["logits/readout"] = h @ (_head(cfg, params) - head0) * mult
    return out


def seed_batches(preset: Preset) -> dict[str, jax.Array]:
    """The ``preset.steps`` training batches of every seed's data order, stacked: {key: [seeds, steps, b, t]}."""
    out = []
    for seed in range(preset.seeds):
        it = lm_data.make_iterator(DataConfig(seq_len=preset.seq_len, batch_size=preset.batch_size, seed=seed), "train")
        out.append([next(it) for _ in range(preset.steps)])
        it.close()
    return {k: jnp.asarray(np.stack([[b[k] for b in seed] for seed in out])) for k in out[0][0]}


# Bounded caches: a width's programs serve its SP and μP models, measured one after the other
@functools.lru_cache(maxsize=4)
def _probe(cfg: ModelConfig):
    """Jitted (params: steps + 1 trees [seeds, ...], tokens [seeds, b, t], multipliers [seeds]) -> rms, update_rms.

    Each is {module: [seeds, steps + 1]}: the RMS of each module's output on the tokens after each
    step (step 0: at init) and of its change since step 0; one forward per (seed, step), vmapped.
    ``cfg`` is SP's config; the ``parametrization.Multipliers`` make it SP or μP.
    """
    def one_seed(params, tokens, mults):
        head0 = _head(cfg, jax.tree.map(lambda x: x[0], params))
        out = jax.vmap(lambda p: activations(cfg, p, tokens, head0, mults))(params)
        axes = lambda v: tuple(range(1, v.ndim))
        return {k: _rms(v, axes(v)) for k, v in out.items()}, {k: _rms(v - v[:1], axes(v)) for k, v in out.items()}

    def probe(snapshots, tokens, mults):
        return jax.vmap(one_seed)(jax.tree.map(lambda *x: jnp.stack(x, axis=1), *snapshots), tokens, mults)

    return jax.jit(probe, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=4)
def _init_program(run: RunConfig, mesh) -> Callable:
    """Jitted (keys [seeds, 2], init multipliers: the params' tree of [seeds]) -> train states of ``run``
    (SP's model), stacked, on ``mesh``: SP's init times the init multipliers (1.0: SP's, bitwise)."""
    def init(key, mults):
        state = lm_step.init_state(run, key)
        return {**state, "params": parametrization.scale_init(state["params"], init_mults=mults)}

    return jax.jit(jax.vmap(init), compiler_options=FAST_COMPILE,
                   out_shardings=sharding.state_shardings(run, mesh, stacked=True))


def _multipliers(cfg: ModelConfig, seeds: int) -> parametrization.Multipliers:
    """``cfg``'s ``parametrization.Multipliers`` (SP's: all 1) for each seed: leaves float32 [seeds]."""
    return jax.tree.map(lambda x: jnp.full((seeds,), x, jnp.float32), lm_model.multipliers(cfg))


def _init_states(run: RunConfig, mesh, keys, mults: parametrization.Multipliers | None = None) -> dict:
    """``lm.train.step.init_state(run, key)`` for each of ``keys`` [seeds, 2], stacked, on the device.

    μP's parameters are SP's times the init multipliers (``lm.model.network.init_params``, the same
    random draws), so the init program of a width (:func:`_init_program`, SP's) serves the SP/μP pair.
    ``mults``: ``run.model``'s :func:`_multipliers` when the caller has them already.
    """
    if mults is None:  # outside the mesh: param_rules traces the model unsharded
        mults = _multipliers(run.model, len(keys))
    sp = dataclasses.replace(run, model=parametrization.sp_config(run.model))
    with sharding.mesh_context(mesh):
        return _init_program(sp, mesh)(keys, mults.init)


def measure(cfg: ModelConfig, preset: Preset, batches: dict | None = None) -> list[dict]:
    """Rows (seed, step, module, rms, update_rms) of ``cfg`` trained ``preset.steps`` Adam steps per seed.

    RMS of each module's output on the seed's first batch after each step (step 0: at init) and of
    its change since step 0. The seeds train stacked, each on its own data order: one train step
    from ``lm.train.compiled`` (the one compile cache, ``runs=seeds``) on a one-device mesh; the
    states are initialised in one vmapped program and the activations measured in another
    (:func:`_probe`), all on the device. The three are SP's config's
    (``parametrization.sp_config``) and take ``cfg``'s ``parametrization.Multipliers`` as inputs, so
    the SP and μP models of a width share them (a μP model: to round-off, traced multipliers for
    static ones; an SP model: bit for bit). ``batches`` (:func:`seed_batches`, built here when None)
    are shared by every width.
    """
    batches = seed_batches(preset) if batches is None else batches
    run = RunConfig(model=parametrization.sp_config(cfg),
                    data=DataConfig(seq_len=preset.seq_len, batch_size=preset.batch_size),
                    optimizer=OptimizerConfig(learning_rate=preset.learning_rate, weight_decay=0.0))
    mesh = sharding.single_device_mesh()
    mults = _multipliers(cfg, preset.seeds)
    state = _init_states(dataclasses.replace(run, model=cfg), mesh,
                         jax.vmap(jax.random.PRNGKey)(jnp.arange(preset.seeds)), mults)
    rows = compiled.stacked_batch_sharding(mesh, preset.batch_size)
    host = jax.device_get({k: batches[k] for k in sharding.BATCH_KEYS})
    feed = [{k: jax.device_put(v[:, t], rows) for k, v in host.items()} for t in range(preset.steps)]
    step, _ = compiled.train_step(run, mesh, state, feed[0], donate=False, compiler_options=FAST_COMPILE,
                                  runs=preset.seeds, multipliers=mults)
    lr, zero = (jnp.full((preset.seeds,), v, jnp.float32) for v in (preset.learning_rate, 0.0))
    snapshots = [state["params"]]  # the params [seeds, ...] at steps 0..n, on the device
    for batch in feed:
        state, _ = step(state, batch, lr, zero, mults)
        snapshots.append(state["params"])
    rms, update = jax.device_get(_probe(run.model)(snapshots, batches["tokens"][:, 0], mults))
    return [{"seed": seed, "step": t, "module": module, "rms": float(rms[module][seed, t]),
             "update_rms": float(update[module][seed, t])}
            for seed in range(preset.seeds) for t in range(preset.steps + 1) for module in rms]


def coord_check(preset: Preset, families=("transformer",), progress: bool = True,
                parametrizations=PARAMETRIZATIONS, **options) -> pd.DataFrame:
    """The table of every (parametrization, family, width, step, module), averaged over seeds.

    ``options``: ModelConfig fields set on the μP models (``mup_zero_readout``, ``mup_zero_query``,
    ``tie_embeddings``; the last on both). A μP base model that equals SP's
    (``lm.model.parametrization.equals_sp``: no zero init, so not with the default untied head) is not
    measured again: its rows are SP's.
    """
    rows = []
    batches = seed_batches(preset)
    for family in families:
        models = {}  # (parametrization, width multiplier) -> the model measured for it
        for par in parametrizations:
            base = family_model(family, preset.base_width, preset.num_layers, par)
            base = dataclasses.replace(base, **{k: v for k, v in options.items()
                                                if par == "mup" or not k.startswith("mup_")})
            for mult in preset.multipliers:
                cfg = parametrization.at_width(base, mult * preset.base_width)
                if parametrization.equals_sp(cfg, lm_model.param_rules(cfg)):  # measured once, as SP
                    cfg = dataclasses.replace(cfg, parametrization="sp", mup_zero_readout=None)
                models[par, mult] = cfg
        measured = {}
        for mult in preset.multipliers:  # width by width: its SP and μP models share the programs
            for par in parametrizations:
                cfg = models[par, mult]
                if cfg not in measured:
                    if progress:
                        print(f"coord check: {family} {par} width {cfg.d_model}", flush=True)
                    measured[cfg] = measure(cfg, preset, batches)
        for par in parametrizations:
            for mult in preset.multipliers:
                cfg = models[par, mult]
                rows += [{"parametrization": par, "family": family, "width": cfg.d_model, **r} for r in measured[cfg]]
    df = pd.DataFrame(rows)
    keys = ["parametrization", "family", "width", "step", "module"]
    return df.groupby(keys, sort=False, as_index=False)[["rms", "update_rms"]].mean()


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Least-squares slope of log rms (and log update_rms) against log width at the last step."""
    last = table[table["step"] == table["step"].max()]
    rows = []
    for (par, fam, module), g in last.groupby(["parametrization", "family", "module"], sort=False):
        lw = np.log(g["width"].to_numpy(float))
        rows.append({"parametrization": par, "family": fam, "module": module,
                     **{f"{col}_slope": float(np.polyfit(lw, np.log(np.maximum(g[col].to_numpy(), 1e-30)), 1)[0])
                        for col in ("rms", "update_rms")}})
    return pd.DataFrame(rows)


def _learning_rate(text: str) -> float:
    """``--learning-rate``'s type: a finite number > 0."""
    try:
        lr = float(text)
    except ValueError:
        lr = float("nan")
    if not (np.isfinite(lr) and lr > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: the learning rate must be a number > 0")
    return lr


def main(argv=None) -> dict:
    p = lib.base_parser("coord_check", __doc__, PRESETS)
    p.add_argument("--family", default="transformer", help=f"one of {FAMILIES} or 'all'")
    p.add_argument("--learning-rate", type=_learning_rate, default=None,
                   help="Adam's learning rate, a number > 0 (default: the preset's, 3e-3)")
    p.add_argument("--head", choices=("family", "tied", "untied"), default="family",
                   help="the LM head: the family's (untied for the transformer, tied elsewhere), tied or untied")
    p.add_argument("--zero-readout", action="store_true",
                   help="μP models: model.mup_zero_readout=true (untied head; the μP default for one)")
    p.add_argument("--random-readout", action="store_true",
                   help="μP models: model.mup_zero_readout=false, a random untied readout (= SP at the base width)")
    p.add_argument("--zero-query", action="store_true", help="μP models: model.mup_zero_query")
    args = p.parse_args(argv)
    if args.family != "all" and args.family not in FAMILIES:
        p.error(f"--family={args.family!r}: allowed values are {FAMILIES} or 'all'")
    if args.zero_readout and args.random_readout:
        p.error("--zero-readout, --random-readout: give one of them")
    options = {"mup_zero_readout": True} if args.zero_readout else {"mup_zero_readout": False} if args.random_readout \
        else {}
    if args.zero_query:
        options["mup_zero_query"] = True
    if args.head != "family":
        options["tie_embeddings"] = args.head == "tied"
    if args.zero_readout and (args.head == "tied" or (args.head == "family" and args.family != "transformer")):
        p.error("--zero-readout: needs an untied head (--head untied, or --family transformer)")
    families = FAMILIES if args.family == "all" else (args.family,)
    out = lib.out_dir("coord_check", args)
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    if args.learning_rate is not None:
        preset = dataclasses.replace(preset, learning_rate=args.learning_rate)
    table = coord_check(preset, families, progress=not args.no_progress, **options)
    table.to_csv(out / "coord_check.csv", index=False)
    sl = slopes(table)
    sl.to_csv(out / "slopes.csv", index=False)
    figures = [f for fam in families for f in lib.figures.plot_coord_check(table, fam, out)]
    chosen = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
    lines = [f"# Coordinate check ({args.preset} preset, learning rate {preset.learning_rate:g}, μP {chosen})", "",
             "Log-log slope against width of each module's RMS and of its change since step 0, at the last step "
             "(μP: ~0 everywhere; SP: the logits and the updates grow).", ""]
    lines += lib.markdown_table(
        ["parametrization", "family", "module", "rms slope", "update slope"],
        [(r.parametrization, r.family, r.module, f"{r.rms_slope:+.3f}", f"{r.update_rms_slope:+.3f}")
         for r in sl.itertuples()], align="lllrr")
    report = lib.write_report(out, lines, figures)
    print(sl.to_string(index=False))
    print(f"report: {report}")
    return {"out": out, "table": table, "slopes": sl, "report": report}


if __name__ == "__main__":
    main(sys.argv[1:])
