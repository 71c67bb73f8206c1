"""The registry of mixer families: pattern letter -> :class:`MixerSpec`, filled lazily from entry points.

A family is one spec: its settings dataclass (nested in ``ModelConfig.families`` under the
family's name), how to build its Flax module, size its decode cache, count its parameters and
FLOPs, check a model's settings, and the logical axes its layers name (with their mesh axes,
:func:`logical_rules`). The specs are found by pattern letter through the standard Python
entry-point group ``scalelab.mixers`` (name: the letter; value: ``module:SPEC``), loaded the
first time a letter or a family name is met, so a saved ``config.json`` loads in any process
where the family's distribution is installed. A third-party family declares, in its own
``pyproject.toml``::

    [project.entry-points."scalelab.mixers"]
    T = "my_package.token_shift:SPEC"

The built-in families (``lm/model/mixers.py``) are entry points of the same form, listed here in
code (:data:`BUILTIN`): an editable install's metadata may predate them. :func:`register_mixer`
still adds a spec by hand (it lasts for the process only).

This module imports nothing from ``lm``: ``lm.model.config`` validates through it without importing
the specs' modules (the import circle config -> mixers -> flops -> config is gone).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any

GROUP = "scalelab.mixers"
# The built-in families, as entry points of GROUP (letter -> "module:attribute").
BUILTIN = {"A": "lm.model.mixers:ATTENTION", "W": "lm.model.mixers:LOCAL_ATTENTION", "R": "lm.model.mixers:RECURRENT",
           "L": "lm.model.mixers:LINEAR_ATTENTION", "M": "lm.model.mixers:MLA_SPEC"}


def _no_checks(cfg) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """Everything the model, the decoder, the counter and the mesh need from one mixer family.

    The callables take the ``lm.model.config.ModelConfig`` ``cfg`` (the family's own settings are
    :func:`settings` ``(cfg, name)``).

    Attributes:
      name: the family's name ("attention", "rnn", ...); its settings' key in ``ModelConfig.families``.
      build: cfg -> the Flax mixer module of one block, called as ``mixer(x, segment_ids=...,
        positions=..., cache=...)`` -> ``(y, new_cache)``, with ``init_cache(batch, max_len, dtype)``.
      params: cfg -> exact parameters of one mixer (``lm.model.counting.param_count`` adds them up).
      flops: (cfg, seq_len, attention) -> forward matmul FLOPs per token of one mixer;
        ``attention`` is "causal" or "dense" (see ``lm/model/counting.py``).
      cache_bytes: (cfg, context_len, dtype) -> bytes of one sequence's decode cache.
      validate: cfg -> None, raising ValueError for settings the family cannot use (checks
        across the model's fields; the settings dataclass checks its own fields itself).
      config: the settings dataclass (frozen, every field defaulted), or None for a family
        without settings of its own.
      rules: (logical axis, mesh axes) of the axes only this family's layers name, merged
        into ``lm.train.sharding.RULES`` (e.g. ``("rnn", ("tensor",))``).
      width_fields: fields of ``config`` that grow with ``d_model`` under μP
        (``lm.model.parametrization.at_width``).
    """

    name: str
    build: Callable[[Any], Any]
    params: Callable[[Any], int]
    flops: Callable[[Any, int, str], float]
    cache_bytes: Callable[[Any, int, Any], int]
    validate: Callable[[Any], None] = _no_checks
    config: type | None = None
    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    width_fields: tuple[str, ...] = ()

    def init_cache(self, cfg, batch: int, max_len: int, dtype) -> Any:
        """The empty decode cache of one block (the module's ``init_cache``)."""
        return self.build(cfg).init_cache(batch, max_len, dtype)


class UnknownMixerError(KeyError, ValueError):
    """A pattern letter or family name that no installed family provides (one line)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping):
    """Pattern letter -> :class:`MixerSpec`; a letter not yet seen loads its entry point."""

    def __init__(self):
        self._specs: dict[str, MixerSpec] = {}

    @staticmethod
    def entry_points() -> list[importlib.metadata.EntryPoint]:
        """The built-in entry points, then those of every installed distribution (read afresh)."""
        builtin = [importlib.metadata.EntryPoint(letter, value, GROUP) for letter, value in BUILTIN.items()]
        return builtin + list(importlib.metadata.entry_points(group=GROUP))

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        if ep.name in self._specs:
            return
        where = f"entry point {ep.name} = {ep.value!r} of group {GROUP!r}"
        try:
            spec = ep.load()
        except Exception as err:  # an installed plugin that does not import: say which one
            raise ValueError(f"{where} failed to load: {type(err).__name__}: {err}") from err
        if ep.name not in self._specs:  # the module may have registered itself on import
            register_mixer(ep.name, spec, where=where)

    def letters(self) -> list[str]:
        """Every letter registered or installed (without loading any)."""
        return sorted(set(self._specs) | {ep.name for ep in self.entry_points()})

    def load_all(self, *, skip_broken: bool = False) -> None:
        """Load every entry point; ``skip_broken``: leave out those that fail (a command line listing
        the families' flags must not stop for a plugin it is not asked to use)."""
        for ep in self.entry_points():
            try:
                self._load(ep)
            except ValueError:
                if not skip_broken:
                    raise

    def __getitem__(self, letter: str) -> MixerSpec:
        if letter not in self._specs:
            for ep in self.entry_points():
                if ep.name == letter:
                    self._load(ep)
                    break
        if letter not in self._specs:
            raise UnknownMixerError(f"unknown mixer letter {letter!r}; allowed (registered) letters are {self.letters()} "
                                    f"(a family is installed as an entry point of group {GROUP!r})")
        return self._specs[letter]

    def __contains__(self, letter) -> bool:
        try:
            self[letter]
        except UnknownMixerError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        self.load_all()
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        self.load_all()
        return len(self._specs)

    def family(self, name: str) -> MixerSpec:
        """The spec of the family called ``name`` (loads every entry point if it is not yet known)."""
        for attempt in range(2):
            for spec in self._specs.values():
                if spec.name == name:
                    return spec
            if attempt == 0:
                self.load_all()
        raise UnknownMixerError(f"unknown mixer family {name!r}; allowed (registered) families are {self.family_names()} "
                                f"(a family is installed as an entry point of group {GROUP!r})")

    def family_names(self) -> list[str]:
        return sorted({spec.name for spec in self._specs.values()})


MIXERS = Registry()


def register_mixer(letter: str, spec: MixerSpec, *, where: str = "register_mixer") -> None:
    """Add a family under a pattern letter (one character, not already taken) for this process.

    Raises:
      ValueError: a taken or long letter, not a MixerSpec, a name taken by another family's
        settings class, or a logical axis another family maps to other mesh axes.
    """
    specs = MIXERS._specs
    if not isinstance(letter, str) or len(letter) != 1 or letter in specs:
        raise ValueError(f"{where}: letter={letter!r} must be one new character; taken: {sorted(specs)}")
    if not isinstance(spec, MixerSpec):
        raise ValueError(f"{where}: spec={spec!r} must be a MixerSpec")
    if spec.config is not None and not (dataclasses.is_dataclass(spec.config) and isinstance(spec.config, type)):
        raise ValueError(f"{where}: MixerSpec {spec.name!r} config={spec.config!r} must be a dataclass (or None)")
    for other in specs.values():
        if other.name == spec.name and other.config is not spec.config:
            raise ValueError(f"{where}: family name {spec.name!r} is taken by another family's settings")
    table = dict(logical_rules())
    for axis, mesh_axes in spec.rules:
        if table.get(axis, mesh_axes) != tuple(mesh_axes):
            raise ValueError(f"{where}: family {spec.name!r} maps logical axis {axis!r} to {tuple(mesh_axes)}, "
                             f"another family to {table[axis]}")
    specs[letter] = spec


def logical_rules() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(logical axis, mesh axes) declared by the registered families, each axis once."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in MIXERS._specs.values():
        for axis, mesh_axes in spec.rules:
            out.setdefault(axis, tuple(mesh_axes))
    return tuple(out.items())


def settings(cfg, name: str):
    """The settings of family ``name`` in model ``cfg``: ``cfg.families[name]``, or the defaults where
    the pattern does not use the family (a spec's functions may be asked about any model)."""
    if name in cfg.families:
        return cfg.families[name]
    spec = MIXERS.family(name)
    if spec.config is None:
        raise ValueError(f"mixer family {name!r} has no settings")
    return spec.config()


def with_settings(cfg, name: str, **changes):
    """``cfg`` with fields of family ``name``'s settings replaced (``dataclasses.replace`` for a family)."""
    new = dataclasses.replace(settings(cfg, name), **changes)
    return dataclasses.replace(cfg, families={**cfg.families, name: new})


def check_families(families, used: dict[str, MixerSpec]) -> FrozenDict:
    """``ModelConfig.families`` checked by the registry: defaults for the used families, unused ones
    only where set to non-defaults; ``used`` maps the pattern's family names to their specs."""
    if not isinstance(families, Mapping):
        raise ValueError(f"ModelConfig.families={families!r}: must be a mapping of family name -> settings")
    out = {}
    for name, value in families.items():
        try:
            spec = used.get(name) or MIXERS.family(name)
        except UnknownMixerError as err:
            raise ValueError(f"ModelConfig.families: {err}") from None
        if spec.config is None:
            raise ValueError(f"ModelConfig.families[{name!r}]: family {name!r} has no settings")
        if not isinstance(value, spec.config):
            raise ValueError(f"ModelConfig.families[{name!r}]={value!r}: must be a {spec.config.__name__}")
        if name in used or value != spec.config():
            out[name] = value
    for name, spec in used.items():
        if spec.config is not None and name not in out:
            out[name] = spec.config()
    return FrozenDict(sorted(out.items()))


class FrozenDict(dict):
    """A read-only, hashable dict (``ModelConfig.families``): frozen configs stay hashable values."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("FrozenDict is read-only: build a new one (dataclasses.replace(cfg, families={...}))")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):
        return type(self), (dict(self),)
