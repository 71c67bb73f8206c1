"""The saved form of a run config: its schema version, the one migration, and the fingerprint form.

``config.json`` carries ``"schema_version"`` (:data:`SCHEMA_VERSION`). Every change of the saved
form is one entry of this history, and :func:`migrate` takes any earlier form to the current one:

  0  family settings as flat model keys (``rnn_width``, ``la_variant``, ``mla_kv_lora_rank``, ...,
     :data:`FLAT_MODEL_KEYS`), the MoE loss weights flat too (``moe_load_balance_weight``);
  1  (no version written) the settings nested as ``model.rnn`` / ``model.la`` / ``model.mla``
     (:data:`NESTED_FAMILIES`), the MoE weights in ``model.moe``; fields added meanwhile
     (:data:`ADDED`) are absent from the configs written before them and take their default;
  2  ``schema_version`` written; a family's settings in ``model.families[<family name>]``
     (``lm.model.families``), only for the families the pattern uses (and any set to non-defaults).

The study fingerprint (``experiments.lib.study``) hashes :func:`fingerprint_form`: the migrated
config written in form 0's keys, without the :data:`ADDED` fields that hold the value the
configs written before them implied. So every fingerprint ever written stays the same: a study
directory written by any version keeps resuming, and fields or families added later change the
fingerprint only where they are set. A family added since (no flat key) stays nested under
``model.families``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from lm.model.families import MIXERS
from lm.model import mup_options

SCHEMA_VERSION = 2
VERSION_KEY = "schema_version"

# form 0: former flat ModelConfig key -> its place in the current model dict
FLAT_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "rnn_width": ("families", "rnn", "width"),
    "rnn_heads": ("families", "rnn", "heads"),
    "conv_width": ("families", "rnn", "conv_width"),
    "scan_impl": ("families", "rnn", "impl"),
    "la_variant": ("families", "la", "variant"),
    "la_feature_map": ("families", "la", "feature_map"),
    "la_output_norm": ("families", "la", "output_norm"),
    "la_chunk_size": ("families", "la", "chunk_size"),
    "la_impl": ("families", "la", "impl"),
    "mla_q_lora_rank": ("families", "mla", "q_lora_rank"),
    "mla_kv_lora_rank": ("families", "mla", "kv_lora_rank"),
    "mla_qk_nope_dim": ("families", "mla", "qk_nope_dim"),
    "mla_qk_rope_dim": ("families", "mla", "qk_rope_dim"),
    "mla_v_head_dim": ("families", "mla", "v_head_dim"),
    "mla_decode_path": ("families", "mla", "decode_path"),
    "moe_load_balance_weight": ("moe", "load_balance_weight"),
    "moe_router_z_weight": ("moe", "router_z_weight"),
}
# form 1: model.<name> -> model.families.<name>
NESTED_FAMILIES = ("rnn", "la", "mla")
# Fields added after configs had been saved (paths in the current form), with the value those
# configs implied: at that value the fingerprint leaves them out.
ADDED: dict[str, Any] = {
    "data.max_train_bytes": None, "data.path": None, "data.num_workers": 0, "model.scan_layers": False,
    "model.remat": "none", "model.parametrization": "sp", "model.base_width": None, "schedule.knots": None,
    "model.mup_zero_readout": None, "model.mup_zero_query": False, "train.checkpoint_steps": None,
    "model.mup_embedding_init": None, "model.mup_embedding_lr": None,
}


def _merge(out: dict, path: tuple[str, ...], value, old: str) -> None:
    *parents, leaf = path
    node = out
    for key in parents:
        node[key] = dict(node.get(key) or {})
        node = node[key]
    if leaf in node and node[leaf] != value:
        raise ValueError(f"ModelConfig: former key {old}={value!r} contradicts {'.'.join(path)}={node[leaf]!r}; "
                         "give one of them")
    node[leaf] = value


def migrate_model(d: Mapping) -> dict:
    """A ModelConfig dict of any form (0, 1, 2) in the current form (a new dict).

    Raises:
      ValueError: a former key and its current place both given with different values.
    """
    out = dict(d)
    # a μP option absent was written before the field existed: its former value (mup_options.SP_OPTIONS)
    # rebuilds that model; mup_zero_readout False: a random readout (the default, None, is a zero untied
    # readout under μP); the embedding constants 1.0 (their μP tied-head default: mup_options.TIED_EMBEDDING_*)
    for name, former in mup_options.SP_OPTIONS.items():
        out.setdefault(name, former)
    if isinstance(out.get("families"), Mapping):
        out["families"] = {name: dict(s) if isinstance(s, Mapping) else s for name, s in out["families"].items()}
    for name in NESTED_FAMILIES:
        if isinstance(out.get(name), Mapping):
            for field, value in out.pop(name).items():
                _merge(out, ("families", name, field), value, f"{name}.{field}")
    for old, path in FLAT_MODEL_KEYS.items():
        if old in out:
            _merge(out, path, out.pop(old), old)
    return out


def migrate(d: Mapping) -> dict:
    """A RunConfig dict (``config.json``) of any schema version in the current form (a deep copy).

    Raises:
      ValueError: a ``schema_version`` newer than :data:`SCHEMA_VERSION` or not an int, or
        contradicting former and current keys.
    """
    out = copy.deepcopy(dict(d))
    version = out.pop(VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= SCHEMA_VERSION:
        raise ValueError(f"config {VERSION_KEY}={version!r}: this scalelab reads versions 0 to {SCHEMA_VERSION} "
                         "(a newer one was written by a newer scalelab)")
    if isinstance(out.get("model"), Mapping):
        out["model"] = migrate_model(out["model"])
    return out


def fingerprint_form(d: Mapping) -> dict:
    """The migrated config ``d`` in form 0's keys, without :data:`ADDED` fields at their implied value.

    Family settings of form 0 are written flat, every one (form 0 held them all: absent ones
    at their defaults); those of families added since stay under ``model.families``.
    """
    out = json.loads(json.dumps(migrate(d)))
    model = out.get("model")
    if isinstance(model, dict):
        for name in mup_options.MUP_OPTIONS:  # equal models compare equal
            model[name] = canonical_mup_option(model, name)
        families = {name: dict(s) for name, s in (model.pop("families", None) or {}).items()}
        for old, path in FLAT_MODEL_KEYS.items():
            if path[0] == "families":
                name, field = path[1:]
                settings = families.get(name, {})
                model[old] = settings.pop(field) if field in settings else getattr(MIXERS.family(name).config(), field)
            elif isinstance(model.get(path[0]), dict) and path[1] in model[path[0]]:
                model[old] = model[path[0]].pop(path[1])
        families = {name: s for name, s in families.items() if s}
        if families:
            model["families"] = families
    for path, implied in ADDED.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.get(key, {})
        if leaf in node and node[leaf] == implied:
            del node[leaf]
    return out


def canonical_mup_option(model: Mapping, name: str):
    """A migrated ModelConfig dict's μP option ``name`` (``lm.model.mup_options.MUP_OPTIONS``): None when it
    builds the default's model, else its value.

    The defaults depend on the parametrization and the head (``lm.model.mup_options``); the fingerprint
    compares this value, so a config that spells the default out and one that leaves it to None fingerprint alike.
    """
    return mup_options.canonical(name, model.get(name, mup_options.SP_OPTIONS[name]),
                                 model.get("parametrization", "sp"), model.get("tie_embeddings", True))
