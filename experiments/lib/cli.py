"""Command-line overrides of any (nested) config dataclass field, and one-line usage errors.

``--model.d_model 512 --optimizer.learning_rate 1e-3 --schedule.kind wsd`` : one flag per
leaf field, named by its dotted path (the settings of every installed mixer family too:
``--model.families.rnn.width 384``), typed from the field's current value; the former family
flags (``--model.rnn.width``, ``--model.rnn_width``: ``lm/model/config_schema.py``) still work,
unlisted. ``none``
sets an optional field to None; tuples are written as JSON lists. Each flag's help says
what the field means (:data:`FIELD_HELP`, else the "name: text" entry of its dataclass's
docstring) and its default.

:class:`OneLineParser` reports a usage error as one line (``prog: error: ...``, exit 2)
instead of the whole usage block, which for ``experiments.train`` is a hundred flags long.
:func:`training` does the same for what can stop a command that trains: a preemption, a
full disk, a run directory in use by another process (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import re
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from lm.train import preemption
from lm.model.config_schema import FLAT_MODEL_KEYS, NESTED_FAMILIES
from lm.model.families import MIXERS, settings
from lm.train.records import DiskFullError, disk_full_error
from lm.train.run_lock import RunDirLockedError

USAGE_ERROR = 2  # refused before anything ran: a bad flag, value, output directory or record; a run directory in use
RUN_FAILED = 1  # the command ran and failed (a diverged run, unreadable checkpoints, a full disk)
PREEMPTED = 75  # stopped by SIGTERM at a step boundary, checkpoint saved: rerun to resume (EX_TEMPFAIL)

EXIT_CODES = f"""\
exit codes:
  0    finished
  1    the run failed: it diverged, its checkpoints cannot be read, or the disk is full (one line names the
       directory and its free space; earlier checkpoints are intact)
  2    refused before training: a bad flag or value, an unusable --out, a run directory holding another
       config or in use by another process (the line names its PID); nothing was written
  {PREEMPTED}   SIGTERM (preemption): training stopped at the next step boundary and saved a checkpoint there;
       rerun the same command to resume. Ctrl-C does the same and then ends by SIGINT (130 in a shell)
"""

# What each field means, where its dataclass docstring has no "name: text" entry of its own.
FIELD_HELP = {
    "name": "run name: the run directory is <--out>/<name> (no '/', '\\' or '..')",
    "model.num_heads": "attention (query) heads",
    "model.num_kv_heads": "key/value heads, grouped-query attention (none: num_heads)",
    "model.head_dim": "dims per attention head (none: d_model // num_heads)",
    "model.attn_softcap": "tanh soft-cap of the attention scores (none: off)",
    "model.logit_softcap": "tanh soft-cap of the output logits (none: off)",
    "model.rope_fraction": "share of each head's dims that get RoPE (0..1)",
    "model.rope_max_wavelength": "RoPE's largest wavelength (base)",
    "optimizer.learning_rate": "peak learning rate (the schedule multiplies it); a finite number > 0",
    "optimizer.b1": "Adam beta1, in [0, 1)",
    "optimizer.b2": "Adam beta2, in [0, 1)",
    "optimizer.eps": "Adam epsilon, > 0",
    "optimizer.weight_decay": "decoupled (AdamW) weight decay, >= 0; on matrices only by default",
    "optimizer.clip_norm": "clip gradients to this global norm (none: no clipping)",
    "optimizer.decay_embeddings": "also decay the embedding matrix",
    "optimizer.decay_all": "decay every parameter (norms and biases too)",
    "schedule.kind": '"cosine" | "constant" | "wsd" (warmup-stable-decay) | "table" (knots) learning-rate schedule',
    "schedule.warmup_steps": "linear warmup length in steps (none: warmup_fraction of the run)",
    "schedule.warmup_fraction": "warmup length as a fraction of the run, when warmup_steps is none",
    "schedule.min_ratio": "final learning rate as a fraction of the peak (cosine and wsd)",
    "schedule.decay_fraction": "wsd: the decay covers this last fraction of the run",
    "schedule.decay_start": "wsd: step the decay starts at (none: from decay_fraction)",
    "schedule.decay_shape": 'wsd: "linear" | "cosine" | "sqrt" | "exponential" | "step" (two-stage) decay',
    "schedule.knots": 'table: a JSON list of [STEP, MULTIPLIER] knots, linear between them (none: other kinds)',
    "train.steps": "optimiser steps of the run",
    "train.seed": "seed of the parameter initialisation",
    "train.z_loss": "weight of the PaLM output z-loss mean(logsumexp^2)",
    "train.eval_every": "validate every this many steps (and at the end)",
    "train.eval_batches": "validation batches per evaluation",
    "train.log_every": "write a metrics record every this many steps",
    "train.checkpoint_every": "save a checkpoint every this many steps (and at the end)",
    "train.checkpoint_steps": "also save at these steps: a JSON list of increasing steps (none: only the period)",
    "train.keep_checkpoints": "checkpoints to keep (none: all)",
    "train.init_from": 'start from another run\'s checkpoint: a JSON list ["RUN_DIR", STEP] (none: from scratch)',
    "train.progress": "show a progress bar (true/false)",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``prog: error: message``, with exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (--help lists the options)", USAGE_ERROR)


def fail(prog: str, message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``prog: error: message`` (one line) to stderr and exit with ``code``."""
    sys.stderr.write(f"{prog}: error: {' '.join(str(message).split())}\n")
    raise SystemExit(code)


@contextlib.contextmanager
def training(prog: str) -> Iterator[None]:
    """Train inside: SIGTERM/Ctrl-C stop at a step boundary (``lm.train.preemption.handle_signals``), and
    what stops the training is one line on stderr with its exit code (:data:`EXIT_CODES`)."""
    try:
        with preemption.handle_signals():
            yield
    except preemption.Preempted as err:
        stopped(prog, err)
    except RunDirLockedError as err:
        fail(prog, str(err), USAGE_ERROR)
    except OSError as err:  # a full disk anywhere (a record, a checkpoint, a figure, the compilation cache)
        full = err if isinstance(err, DiskFullError) else disk_full_error(err, _directory_of(err))
        if full is None:
            raise
        fail(prog, str(full), RUN_FAILED)


def _directory_of(err: OSError) -> str:
    return str(Path(err.filename).parent) if err.filename else "."


def stopped(prog: str, err: preemption.Preempted) -> NoReturn:
    """Print the preemption's one line; exit :data:`PREEMPTED`, or after Ctrl-C end as Ctrl-C does."""
    sys.stderr.write(f"{prog}: {' '.join(str(err).split())}\n")
    sys.stderr.flush()
    if err.signum == signal.SIGINT:
        # Python ends on an uncaught KeyboardInterrupt by SIGINT (status 130), which stops shell loops;
        # the line above replaces its traceback.
        sys.excepthook = _quiet_interrupt
        raise KeyboardInterrupt from None
    raise SystemExit(PREEMPTED)


def _quiet_interrupt(kind, value, tb) -> None:
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)


def _family_settings(model) -> list[tuple[str, Any]]:
    """(name, settings) of every installed mixer family with settings: ``model``'s, else the defaults."""
    MIXERS.load_all(skip_broken=True)  # a broken plugin is named when a config asks for it
    return [(name, settings(model, name)) for name in MIXERS.family_names() if MIXERS.family(name).config]


def _leaf_fields(cfg, prefix=""):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if f.name == "families" and isinstance(value, Mapping):  # ModelConfig.families
            for name, family in _family_settings(cfg):
                yield from _leaf_fields(family, f"{path}.{name}.")
        elif dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, path + ".")
        else:
            yield path, f, value


def docstring_fields(cls) -> dict[str, str]:
    """Field name -> text of the "name: text" (or "a, b: text") entries of ``cls``'s docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    names = {f.name for f in dataclasses.fields(cls)}
    ident = r"[a-z_][a-z0-9_]*"
    sep = r"\s*(?:,|/)\s*"
    entry = re.compile(rf"(?:^|(?<=\n)|(?<=; ))[ \t]*(?P<names>{ident}(?:{sep}{ident})*):\s+")
    hits = [m for m in entry.finditer(doc) if set(re.split(sep, m.group("names"))) <= names]
    out: dict[str, str] = {}
    for i, m in enumerate(hits):
        end = hits[i + 1].start() if i + 1 < len(hits) else len(doc)
        text = " ".join(re.split(r"\n\s*\n", doc[m.end():end])[0].split()).rstrip(" ;")
        for name in re.split(sep, m.group("names")):
            out.setdefault(name, text)
    return out


def field_help(cfg) -> dict[str, str]:
    """Dotted path -> what the field means, for every leaf field of dataclass ``cfg``."""
    out: dict[str, str] = {}

    def walk(obj, prefix):
        docs = docstring_fields(type(obj))
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{prefix}{f.name}"
            if f.name == "families" and isinstance(value, Mapping):
                for name, family in _family_settings(obj):
                    walk(family, f"{path}.{name}.")
            elif dataclasses.is_dataclass(value):
                walk(value, path + ".")
            else:
                out[path] = FIELD_HELP.get(path) or docs.get(f.name, "")

    walk(cfg, "")
    return out


def _kind(value, field_type: str) -> str:
    """The metavar of a field: its value's type, or for None the annotation's (never NONETYPE)."""
    if value is not None and not isinstance(value, tuple):
        return type(value).__name__.upper()
    if "tuple" in field_type or isinstance(value, tuple):
        return "JSON"
    for name in ("bool", "int", "float", "str"):
        if name in field_type:
            return name.upper()
    return "VALUE"


def _parse_value(text: str, current: Any, field_type: str) -> Any:
    if text.lower() == "none":
        return None
    if isinstance(current, bool) or field_type.startswith("bool"):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    kind = type(current) if current is not None else None
    if kind is None:  # optional field currently None: infer from the annotation
        kind = int if "int" in field_type and "float" not in field_type else float if "float" in field_type else None
        if "tuple" in field_type:
            kind = tuple
    if kind is tuple:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}") from err
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
        return tuple(tuple(x) if isinstance(x, list) else x for x in parsed)
    if kind in (int, float):
        try:
            return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    return text


def add_config_args(parser: argparse.ArgumentParser, cfg) -> None:
    """Add one ``--a.b.c`` flag per leaf field of dataclass ``cfg`` (defaults: its values)."""
    group = parser.add_argument_group("config overrides (any field; 'none' for None)")
    docs = field_help(cfg)
    for path, f, value in _leaf_fields(cfg):
        meaning = docs[path].rstrip(".").replace("%", "%%")
        default = json.dumps(list(value)) if isinstance(value, tuple) else repr(value)
        group.add_argument(f"--{path}", dest=f"cfg:{path}", default=None, metavar=_kind(value, str(f.type)),
                           help=f"{meaning} (default: {default.replace('%', '%%')})" if meaning
                           else f"default: {default.replace('%', '%%')}")
    leaves = set(docs)
    former = {f"model.{old}": "model." + ".".join(path) for old, path in FLAT_MODEL_KEYS.items()}
    former.update({path.replace("model.families.", "model.", 1): path for path in leaves
                   if path.split(".")[:3] in (["model", "families", name] for name in NESTED_FAMILIES)})
    for old, path in former.items():  # the flags of former config forms, kept working, not listed
        if path in leaves:
            group.add_argument(f"--{old}", dest=f"cfg:{path}", default=None, help=argparse.SUPPRESS)


def apply_overrides(cfg, args: argparse.Namespace):
    """A copy of ``cfg`` with every flag given on the command line applied (validated).

    Raises:
      ValueError: a value that does not parse (naming the flag) or that the config refuses.
    """
    updates: dict[str, Any] = {}
    for path, f, value in _leaf_fields(cfg):
        text = getattr(args, f"cfg:{path}", None)
        if text is not None:
            try:
                updates[path] = _parse_value(text, value, str(f.type))
            except argparse.ArgumentTypeError as err:
                raise ValueError(f"--{path}: {err}") from err
    return replace_path(cfg, updates)


def replace_path(cfg, updates: dict[str, Any]):
    """``dataclasses.replace`` by dotted paths: {"model.d_model": 512}."""
    nested: dict[str, dict] = {}
    direct = {}
    for path, value in updates.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        if head == "families" and isinstance(getattr(cfg, head), Mapping):  # ModelConfig.families
            by_family: dict[str, dict] = {}
            for path, value in sub.items():
                name, _, rest = path.partition(".")
                by_family.setdefault(name, {})[rest] = value
            direct[head] = {**cfg.families, **{name: replace_path(settings(cfg, name), changes)
                                               for name, changes in by_family.items()}}
        else:
            direct[head] = replace_path(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **direct) if direct else cfg
