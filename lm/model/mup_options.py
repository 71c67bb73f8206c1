"""The μP options of ``ModelConfig`` whose default depends on the model: their defaults, one rule, validation.

Each option's None stands for a value that depends on the parametrization and the head
(:data:`MUP_OPTIONS`); :func:`resolve` is that one rule on plain values, used alike on a
``ModelConfig`` (``lm.model.parametrization``) and on a saved config dict
(``lm.model.config_schema``'s fingerprint form). Why these defaults: the docstring of
``lm/model/parametrization.py`` (zero readout; tied embedding).

  mup_zero_readout    the untied readout starts at zero (Tensor Programs V)
  mup_embedding_init  c: base-width constant multiplying the embedding's init
  mup_embedding_lr    κ: base-width constant multiplying the embedding's (width-scaled) lr
"""

from __future__ import annotations

import math
from typing import Any

# ModelConfig field -> its value under (SP, μP with a tied head, μP with an untied head).
# The tied head's embedding constants stay 1 (μP = SP at the base width): init x1/4 with lr x4 flattens
# the logits' update of four tied families but not GLA's (README, μP: measured slopes and losses).
TIED_EMBEDDING_INIT, TIED_EMBEDDING_LR = 1.0, 1.0
MUP_OPTIONS: dict[str, tuple[Any, Any, Any]] = {
    "mup_zero_readout": (False, False, True),
    "mup_embedding_init": (1.0, TIED_EMBEDDING_INIT, 1.0),
    "mup_embedding_lr": (1.0, TIED_EMBEDDING_LR, 1.0),
}
# the options under which μP equals SP at the base width: the former defaults (saved configs without a field)
SP_OPTIONS = {name: values[0] for name, values in MUP_OPTIONS.items()}
EMBEDDING_OPTIONS = ("mup_embedding_init", "mup_embedding_lr")


def resolve(name: str, value, parametrization: str, tie_embeddings: bool):
    """The value the option ``name`` set to ``value`` stands for: itself, or for None its default here."""
    if value is not None:
        return value
    sp, tied, untied = MUP_OPTIONS[name]
    return sp if parametrization != "mup" else tied if tie_embeddings else untied


def canonical(name: str, value, parametrization: str, tie_embeddings: bool):
    """``value`` of the option ``name``, or None where it builds the same model as the default."""
    return None if value is None or value == resolve(name, None, parametrization, tie_embeddings) else value


def checked(cfg) -> dict[str, Any]:
    """The μP options of ModelConfig ``cfg`` as it stores them (one value per model), after validation.

    ``mup_zero_readout`` False where it changes nothing (SP, tied head) is stored as None; an embedding
    constant is stored as a float, None where it equals its default.

    Raises:
      ValueError: naming the field, its value and what is allowed.
    """
    out = {}
    for name in ("mup_zero_readout", "mup_zero_query"):
        value = getattr(cfg, name)
        if value not in ((None, False, True) if name == "mup_zero_readout" else (False, True)):
            raise ValueError(f"ModelConfig.{name}={value!r}: allowed values are "
                             f"{(None, False, True) if name == 'mup_zero_readout' else (False, True)}")
        if value and cfg.parametrization != "mup":
            raise ValueError(f"ModelConfig.{name}=True: only with parametrization='mup' (got {cfg.parametrization!r})")
    if cfg.mup_zero_readout and cfg.tie_embeddings:
        raise ValueError("ModelConfig.mup_zero_readout=True: needs an untied head (tie_embeddings=False); "
                         "the tied head is the embedding, which cannot start at zero")
    out["mup_zero_readout"] = None if cfg.mup_zero_readout is False and (
        cfg.parametrization != "mup" or cfg.tie_embeddings) else cfg.mup_zero_readout
    for name in EMBEDDING_OPTIONS:
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"ModelConfig.{name}={value!r}: allowed values are None (the default) or a finite "
                             "positive number")
        if value is not None and value != 1.0 and cfg.parametrization != "mup":
            raise ValueError(f"ModelConfig.{name}={value!r}: only with parametrization='mup' "
                             f"(got {cfg.parametrization!r}; allowed there: None or 1.0)")
        out[name] = canonical(name, None if value is None else float(value), cfg.parametrization, cfg.tie_embeddings)
    return out
