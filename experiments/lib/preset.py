"""The base of every study's presets: a frozen dataclass of the grid's knobs.

Each study subclasses :class:`Preset` with its own fields (sizes, budgets, learning rates,
batch shape, ...) and validation in ``__post_init__``, and names a few instances in its
``PRESETS`` dict (``smoke`` for tests and CI, ``default`` for a 2-core CPU, ``full`` for a
GPU or TPU). ``python -m experiments.<study> --help`` lists them with :meth:`Preset.summary`;
command-line overrides go through :meth:`Preset.replace`.

A preset only builds the grid: a study's fingerprint (:meth:`experiments.lib.study.Study.fingerprint`)
hashes the runs' configs, never the preset's class or field names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self


@dataclasses.dataclass(frozen=True)
class Preset:
    """A study's settings; subclasses add the fields (frozen dataclasses, validated in ``__post_init__``)."""

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` applied; a change of None (a flag not given) is skipped.

        Raises:
          ValueError: a name that is not a field of this preset, or a value ``__post_init__`` refuses.
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ValueError(f"{type(self).__qualname__} has no fields {unknown}; its fields are {names}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def summary(self) -> str:
        """One line of the fields, ``name value; ...`` (tuples comma-separated, floats in ``%g``)."""
        def show(value: Any) -> str:
            if isinstance(value, float):
                return f"{value:g}"
            if isinstance(value, tuple):
                return ", ".join(show(v) for v in value)
            return str(value)

        return "; ".join(f"{f.name} {show(getattr(self, f.name))}" for f in dataclasses.fields(self))


def presets_epilog(presets: Mapping[str, Preset]) -> str:
    """The ``--help`` epilog listing every named preset of a study."""
    width = max(len(name) for name in presets)
    return "\n".join(["presets:", *(f"  {name:{width}s}  {p.summary()}" for name, p in presets.items())])
