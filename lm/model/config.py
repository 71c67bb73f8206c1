"""Frozen configuration dataclasses: model, optimiser, schedule, run.

A model is a block pattern over mixer letters, repeated to ``num_layers`` blocks
("A" full attention, "W" local/sliding-window attention; every letter is a family of the
registry :mod:`lm.model.families`, built in or installed as an entry point; a family's settings are
nested in ``ModelConfig.families``, e.g. ``model.families["rnn"]``). A saved config carries a
schema version and migrates (:mod:`lm.model.config_schema`).
Sweeps build configs with ``dataclasses.replace``.
Every ``__post_init__`` raises ``ValueError`` naming the field, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math

from collections.abc import Mapping
from typing import Any

from layers.moe import MoEConfig
from lm.model.config_schema import SCHEMA_VERSION, VERSION_KEY, migrate, migrate_model
from lm.data.config import DataConfig
from lm.model.families import MIXERS, FrozenDict, MixerSpec, UnknownMixerError, check_families
from lm.model import mup_options
from pallas_kernels.backend import IMPLS

DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
MLP_ACTIVATIONS = ("geglu", "swiglu")
SCHEDULES = ("cosine", "constant", "wsd", "table")
DECAY_SHAPES = ("linear", "cosine", "sqrt", "exponential", "step")
PARAMETRIZATIONS = ("sp", "mup")


def _positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{type(obj).__name__}.{name}={value!r}: must be a finite positive number")


def _non_negative(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{type(obj).__name__}.{name}={value!r}: must be a finite number >= 0")


def _choice(obj, name, allowed):
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{type(obj).__name__}.{name}={value!r}: allowed values are {allowed}")


def _settings_from_dict(name: str, d):
    """One family's settings from their dict (a family without settings keeps it: ``_families`` refuses it)."""
    try:
        kind = MIXERS.family(name).config
    except UnknownMixerError as err:
        raise ValueError(f"ModelConfig.families: {err}") from None
    return from_dict(kind, d) if kind is not None and isinstance(d, Mapping) else d


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only language model.

    Attributes:
      vocab_size: tokens in the vocabulary (byte tokenizer: 256 bytes + specials).
      d_model: residual width d.
      num_layers: blocks; ``pattern`` is repeated (and truncated) to this length.
      pattern: mixer letters, e.g. "A" (transformer), "RRW" (Griffin), "R" (Hawk).
      num_heads, num_kv_heads, head_dim: attention heads (kv heads default to num_heads,
        head_dim to d_model // num_heads).
      d_ff: gated-MLP hidden width (default 4 * d_model).
      mlp_activation: "geglu" or "swiglu".
      window: sliding-window look-back of "W" blocks (and of "A" blocks if ``attention_window`` is set).
      attention_window: optional window for the "A" blocks (None = full causal).
      rope_fraction, rope_max_wavelength: RoPE on a share of each head's dims.
      attn_softcap: tanh soft-cap of attention scores; logit_softcap: of the output logits.
      tie_embeddings: output head shares the embedding matrix.
      dtype: activation/compute dtype; parameters (and so the optimiser state) are always
        float32; recurrent states, softmax statistics and the logits stay float32.
      scan_layers: run the blocks as ``nn.scan`` over repetitions of the block pattern
        (compile time independent of depth); parameters of the repeated blocks are stacked
        on a leading "layers" axis (``lm.model.network.stack_layers`` / ``unstack_layers`` convert).
      remat: rematerialisation of each block in training (``jax.checkpoint``): "none",
        "full" (save only block inputs), or the ``jax.checkpoint_policies`` of that name
        ("dots_saveable", "dots_with_no_batch_dims_saveable": matmul outputs are kept).
      attention_impl: ``flash_attention`` impl switch for every attention layer.
      parametrization: "sp" (standard) or "mup" (Maximal Update Parametrization,
        ``lm/model/parametrization.py``); base_width: the d_model at which μP's width multipliers
        are 1 (required for "mup").
      mup_zero_readout: μP only, Tensor Programs V's zero-initialised untied readout (LM head).
        None (default): on for a μP model with an untied head, off otherwise
        (``lm.model.parametrization.zero_readout``); False where it changes nothing (SP, tied head)
        is stored as None. Saved configs without the field (written when the default was a
        random readout) load as False.
      mup_zero_query: μP only, zero-initialised query projections (default False).
      mup_embedding_init, mup_embedding_lr: μP only, base-width constants multiplying the token
        embedding's init and its (width-scaled) lr multiplier. None (default): the tied head's
        constants (``lm.model.mup_options``, 1.0 for now) for a μP model with a tied head, 1.0
        otherwise; a value equal to the default is stored as None. Saved configs without the
        fields (written when both were 1) load as 1.0.

    families: family name -> its settings (the ``config`` class of its :class:`lm.model.families.MixerSpec`),
      validated by the registry; the families the pattern uses get their defaults, settings of an
      unused family are kept only when they differ from the defaults. Built in (``lm/model/mixers.py``):
      "rnn" for "R" blocks (Griffin/Hawk, De et al. 2024, ``layers.recurrent_block.RecurrentConfig``),
      "la" for "L" blocks (causal linear attention; Katharopoulos 2020, RetNet 2023, GLA 2024,
      ``layers.linear_attention.LinearAttentionConfig``), "mla" for "M" blocks (Multi-head Latent
      Attention, DeepSeek-V2, ``layers.mla.MLAConfig``). Saved configs of every earlier form
      (``model.rnn``, flat ``rnn_width``, ...) still load: see ``lm/model/config_schema.py``.
    MoE feed-forward (``layers/moe.py``):
      moe_every: 0 = dense MLPs; n = blocks n-1, 2n-1, ... (every n-th) use ``moe``
        (the block stack's layout, like ``pattern``);
      moe: ``layers.moe.MoEConfig``, the experts, router, dispatch and auxiliary-loss weights
        (saved configs with the former flat ``moe_load_balance_weight`` /
        ``moe_router_z_weight`` still load).
    """

    vocab_size: int = 259
    d_model: int = 256
    num_layers: int = 4
    pattern: str = "A"
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    mlp_activation: str = "geglu"
    window: int = 1024
    attention_window: int | None = None
    rope_fraction: float = 1.0
    rope_max_wavelength: float = 10_000.0
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    tie_embeddings: bool = True
    dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    attention_impl: str = "auto"
    families: Mapping[str, Any] = FrozenDict()
    moe_every: int = 0
    moe: MoEConfig = MoEConfig()
    parametrization: str = "sp"
    base_width: int | None = None
    mup_zero_readout: bool | None = None
    mup_zero_query: bool = False
    mup_embedding_init: float | None = None
    mup_embedding_lr: float | None = None

    def __post_init__(self):
        _positive(self, "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "d_ff", "window", "attn_softcap", "logit_softcap", "rope_max_wavelength")
        if self.attention_window is not None and self.attention_window < 0:
            raise ValueError(f"ModelConfig.attention_window={self.attention_window}: must be >= 0 or None")
        if not self.pattern:
            raise ValueError("ModelConfig.pattern='': must hold at least one mixer letter")
        try:
            used = {spec.name: spec for spec in (MIXERS[letter] for letter in dict.fromkeys(self.pattern))}
        except UnknownMixerError as err:
            raise ValueError(f"ModelConfig.pattern={self.pattern!r}: {err}") from None
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads} "
                "(set head_dim explicitly or choose num_heads dividing d_model)"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} is not divisible by num_kv_heads={self.kv_heads}; "
                f"allowed num_kv_heads are the divisors of {self.num_heads}"
            )
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"ModelConfig.rope_fraction={self.rope_fraction}: must be in [0, 1]")
        _choice(self, "mlp_activation", MLP_ACTIVATIONS)
        _choice(self, "dtype", DTYPES)
        _choice(self, "remat", REMAT)
        _choice(self, "scan_layers", (False, True))
        _choice(self, "attention_impl", (*IMPLS, "blocked"))
        if not isinstance(self.moe, MoEConfig):
            raise ValueError(f"ModelConfig.moe={self.moe!r}: must be a MoEConfig")
        object.__setattr__(self, "families", check_families(self.families, used))
        if self.moe_every < 0:
            raise ValueError(f"ModelConfig.moe_every={self.moe_every}: must be 0 (no MoE) or a positive block period")
        for spec in used.values():
            spec.validate(self)
        _choice(self, "parametrization", PARAMETRIZATIONS)  # μP (issue 19): lm/model/parametrization.py
        _positive(self, "base_width")
        if self.parametrization == "mup":
            from lm.model.parametrization import base_config

            base_config(self)  # raises ValueError without base_width or for non-integer base dims
        for name, value in mup_options.checked(self).items():  # one value per model (lm/model/mup_options.py)
            object.__setattr__(self, name, value)

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def ff_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def block_letters(self) -> str:
        """The mixer letter of every block: the pattern repeated to ``num_layers``."""
        reps = -(-self.num_layers // len(self.pattern))
        return (self.pattern * reps)[: self.num_layers]

    @property
    def block_mixers(self) -> tuple[MixerSpec, ...]:
        """The :class:`lm.model.families.MixerSpec` of every block, in block order."""
        return tuple(MIXERS[letter] for letter in self.block_letters)

    def is_moe_block(self, index: int) -> bool:
        """Whether block ``index`` uses the MoE feed-forward."""
        return self.moe_every > 0 and (index + 1) % self.moe_every == 0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) with global-norm gradient clipping.

    Weight decay is applied to matrices only (not norms, biases, embeddings) unless
    ``decay_embeddings`` / ``decay_all`` ask for it.
    """

    learning_rate: float = 3e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    decay_embeddings: bool = False
    decay_all: bool = False

    def __post_init__(self):
        _positive(self, "learning_rate", "eps", "clip_norm")
        _non_negative(self, "weight_decay")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"OptimizerConfig.{name}={getattr(self, name)}: must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule: multiplier of ``OptimizerConfig.learning_rate`` per step.

    kind: "cosine" (linear warmup then cosine to ``min_ratio``), "constant" (after warmup),
      or "wsd" (Warmup-Stable-Decay, Hu et al. 2024 MiniCPM: warmup, constant, then a decay
      over the last ``decay_fraction`` of the steps, or from ``decay_start`` if set, with
      ``decay_shape`` linear | cosine | sqrt (1 - sqrt(progress)) | exponential | step (straight
      to ``min_ratio``: the two-stage schedules of Luo et al. 2025, arXiv:2503.12811), or "table"
      (after the warmup, the multiplier interpolated linearly between ``knots``: an arbitrary
      schedule, e.g. one optimised by ``scaling.optimize_schedule``, compressed to a few knots).
    warmup_steps: absolute; if None, ``warmup_fraction`` of the total steps.
    knots: kind "table" only: ((step, multiplier), ...), steps strictly increasing integers >= 0,
      multipliers > 0; held constant before the first and after the last knot.
    """

    kind: str = "cosine"
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    min_ratio: float = 0.1
    decay_fraction: float = 0.2
    decay_start: int | None = None
    decay_shape: str = "linear"
    knots: tuple[tuple[int, float], ...] | None = None

    def __post_init__(self):
        _choice(self, "kind", SCHEDULES)
        _choice(self, "decay_shape", DECAY_SHAPES)
        if (self.kind == "table") != (self.knots is not None):
            raise ValueError(f"ScheduleConfig.knots={self.knots!r}: required by kind 'table' and only by it "
                             f"(kind={self.kind!r})")
        if self.knots is not None:
            ok = (isinstance(self.knots, tuple) and len(self.knots) >= 1
                  and all(isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], int) and not isinstance(k[0], bool)
                          and k[0] >= 0 and isinstance(k[1], (int, float)) and math.isfinite(k[1]) and k[1] > 0
                          for k in self.knots)
                  and all(a[0] < b[0] for a, b in zip(self.knots, self.knots[1:])))
            if not ok:
                raise ValueError(f"ScheduleConfig.knots={self.knots!r}: must be ((step, multiplier), ...) with "
                                 "strictly increasing integer steps >= 0 and finite multipliers > 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"ScheduleConfig.warmup_steps={self.warmup_steps}: must be >= 0")
        for name in ("warmup_fraction", "min_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ScheduleConfig.{name}={getattr(self, name)}: must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length, evaluation, logging and checkpointing of one run.

    steps: optimiser steps. z_loss: weight of the PaLM output z-loss mean(logsumexp^2).
    eval_every / eval_batches: periodic validation. checkpoint_every: orbax save period
    (the final step is always saved); checkpoint_steps: further steps to save at (WSD
    branch points: a stable run saves exactly where its branches start, not at every gcd of
    them); keep_checkpoints: how many to retain (None = all, useful for WSD branching).
    init_from: (run_dir, step) to start from a saved state (WSD decay branches). The loss
    curve is logged every ``log_every`` steps with the cumulative training FLOPs (the sweep
    runner interpolates it at fixed FLOP counts).
    """

    steps: int = 200
    seed: int = 0
    z_loss: float = 0.0
    eval_every: int = 100
    eval_batches: int = 4
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int | None = 2
    init_from: tuple[str, int] | None = None
    progress: bool = True
    checkpoint_steps: tuple[int, ...] | None = None

    def __post_init__(self):
        _positive(self, "steps", "eval_every", "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints")
        _non_negative(self, "z_loss")
        if self.init_from is not None and not (
                isinstance(self.init_from, (tuple, list)) and len(self.init_from) == 2
                and isinstance(self.init_from[0], str) and isinstance(self.init_from[1], int)
                and not isinstance(self.init_from[1], bool) and self.init_from[1] >= 0):
            raise ValueError(f"TrainConfig.init_from={self.init_from!r}: must be None or (run_dir, step) with a "
                             "string run_dir and an integer step >= 0")
        steps = self.checkpoint_steps
        if steps is not None and not (
                isinstance(steps, tuple) and all(isinstance(k, int) and not isinstance(k, bool) for k in steps)
                and all(1 <= k <= self.steps for k in steps) and list(steps) == sorted(set(steps))):
            raise ValueError(f"TrainConfig.checkpoint_steps={steps!r}: must be None or a tuple of strictly "
                             f"increasing integer steps in [1, steps={self.steps}]")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    name: str = "run"

    def __post_init__(self):
        # "" is allowed here (configs compared without their names); a run directory needs a name
        if (not isinstance(self.name, str) or self.name == "." or ".." in self.name
                or any(c in self.name for c in "/\\\0")):
            raise ValueError(f"RunConfig.name={self.name!r}: must be usable as a directory name: no path separator "
                             "('/' or '\\\\'), no '..', not '.'")

    def to_dict(self) -> dict:
        return _thaw(dataclasses.asdict(self))

    def to_json(self) -> str:
        """``config.json``: :meth:`to_dict` and the schema version (``lm/model/config_schema.py``)."""
        return json.dumps({**self.to_dict(), VERSION_KEY: SCHEMA_VERSION}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return from_dict(cls, d)


def _thaw(d):
    """``dataclasses.asdict`` output with plain dicts for the read-only ``ModelConfig.families``."""
    return {k: _thaw(v) for k, v in d.items()} if isinstance(d, dict) else d


def from_dict(cls, d: dict):
    """Rebuild a (nested) config dataclass from ``dataclasses.asdict`` output or a ``config.json``.

    A RunConfig or ModelConfig dict of an earlier schema is migrated first (``lm/model/config_schema.py``).
    """
    d = migrate(d) if cls is RunConfig else migrate_model(d) if cls is ModelConfig else d
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in fields:
            raise ValueError(f"{cls.__name__}: unknown field {key!r}; allowed fields are {sorted(fields)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = from_dict(type(default), value)
        elif cls is ModelConfig and key == "families" and isinstance(value, Mapping):
            value = {name: _settings_from_dict(name, s) for name, s in value.items()}
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)

