"""Saved configs from before the mixer families were nested: the flat-key layout and its mapping.

Until the family refactor a ModelConfig held every family's settings as flat prefixed
fields (``rnn_width``, ``la_variant``, ``mla_kv_lora_rank``, ...); they now live in
``model.rnn`` (``layers.recurrent_block.RecurrentConfig``), ``model.la``
(``layers.linear_attention.LinearAttentionConfig``) and ``model.mla`` (``layers.mla.MLAConfig``),
and the MoE auxiliary-loss weights (``moe_load_balance_weight``, ``moe_router_z_weight``)
in ``model.moe`` (``layers.moe.MoEConfig``).

Two directions:
  * :func:`upgrade_model_dict` / :func:`upgrade_run_dict`: old flat keys -> nested, so a
    config.json written before still loads (``lm.config.from_dict``) and compares equal;
  * :func:`legacy_run_dict`: nested -> the old flat keys, the canonical form the study
    runner hashes, so the grid fingerprints of studies written before are unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

# former flat ModelConfig key -> (nested config field, its field)
LEGACY_MODEL_KEYS: dict[str, tuple[str, str]] = {
    "rnn_width": ("rnn", "width"),
    "rnn_heads": ("rnn", "heads"),
    "conv_width": ("rnn", "conv_width"),
    "scan_impl": ("rnn", "impl"),
    "la_variant": ("la", "variant"),
    "la_feature_map": ("la", "feature_map"),
    "la_output_norm": ("la", "output_norm"),
    "la_chunk_size": ("la", "chunk_size"),
    "la_impl": ("la", "impl"),
    "mla_q_lora_rank": ("mla", "q_lora_rank"),
    "mla_kv_lora_rank": ("mla", "kv_lora_rank"),
    "mla_qk_nope_dim": ("mla", "qk_nope_dim"),
    "mla_qk_rope_dim": ("mla", "qk_rope_dim"),
    "mla_v_head_dim": ("mla", "v_head_dim"),
    "mla_decode_path": ("mla", "decode_path"),
    "moe_load_balance_weight": ("moe", "load_balance_weight"),
    "moe_router_z_weight": ("moe", "router_z_weight"),
}


def upgrade_model_dict(d: Mapping) -> dict:
    """A ModelConfig dict with every former flat family key moved into its nested config.

    Without ``mup_zero_readout`` (written before the field existed, when a μP readout started
    random) it reads as False, so the config rebuilds the same model (the default is now a zero
    untied readout under μP; ``ModelConfig`` stores False as None where it changes nothing).

    Raises:
      ValueError: a flat key and its nested field both given with different values.
    """
    out = dict(d)
    out.setdefault("mup_zero_readout", False)
    for old, (group, name) in LEGACY_MODEL_KEYS.items():
        if old not in out:
            continue
        value = out.pop(old)
        nested = dict(out.get(group) or {})
        if name in nested and nested[name] != value:
            raise ValueError(f"ModelConfig: former key {old}={value!r} contradicts {group}.{name}={nested[name]!r}; "
                             "give one of them")
        nested[name] = value
        out[group] = nested
    return out


def upgrade_run_dict(d: Mapping) -> dict:
    """A RunConfig dict (``config.json``) whose model uses the nested family configs."""
    out = dict(d)
    if isinstance(out.get("model"), Mapping):
        out["model"] = upgrade_model_dict(out["model"])
    return out


def canonical_zero_readout(model: Mapping) -> bool | None:
    """A saved ModelConfig dict's ``mup_zero_readout``: None when it builds the default's readout, else the bool.

    Absent means False (written before the field existed, when a μP readout started random); the
    default (None) is a zero readout for μP with an untied head, a random one otherwise. The study
    fingerprint compares this value (``experiments/lib/study.py``), so equal models compare equal.
    """
    value = model.get("mup_zero_readout", False)
    default = model.get("parametrization", "sp") == "mup" and not model.get("tie_embeddings", True)
    return None if value is None or value == default else value


def legacy_run_dict(d: Mapping) -> dict:
    """A RunConfig dict whose model has the former flat family keys (a deep copy; idempotent).

    Nested fields without a former key (of families added since) stay nested.
    """
    out = copy.deepcopy(dict(d))
    model = out.get("model")
    if not isinstance(model, dict):
        return out
    for old, (group, name) in LEGACY_MODEL_KEYS.items():
        nested = model.get(group)
        if isinstance(nested, dict) and name in nested:
            model[old] = nested.pop(name)
    for group in {group for group, _ in LEGACY_MODEL_KEYS.values()}:
        if model.get(group) == {}:
            del model[group]
    return out
