"""Saved studies stay loadable: the grid fingerprints of the presets are those studies were written with.

A study directory is refused when its study.json holds another fingerprint
(:func:`experiments.lib.sweep.check_out`), so a change of any of these values orphans every
saved study of that preset. The values were computed before the runner moved into
``experiments/lib`` (commit b071622) and must never change with code moves: the fingerprint
hashes the runs' configs and FLOP checkpoints only, never a class, module or preset name.
"""

from __future__ import annotations

import dataclasses

import pytest

from experiments import architectures, chinchilla, lib, lr_scaling, mup_transfer, schedules, wsd

PINNED = {
    "chinchilla smoke": "4fee6022b1ba0b57",
    "chinchilla default": "5c7d13d6cd132658",
    "architectures smoke": "98f6d6dcabec2c72",
    "lr_scaling smoke": "b82414b58a9e71b4",
    "mup_transfer smoke": "1786bee0248ee10e",
    "wsd smoke": "ca7ab1a894ac63fe",
    "schedules smoke": "b1f1307ae6b53ca7",
}


def _study(key: str) -> lib.Study:
    name, preset = key.split()
    if name == "chinchilla":
        return chinchilla.build_study(chinchilla.PRESETS[preset], "stdlib", preset)
    if name == "architectures":
        return architectures.build_study(architectures.PRESETS[preset], preset)
    if name == "lr_scaling":
        return lr_scaling.build_study(lr_scaling.PRESETS[preset], preset)[0]
    if name == "mup_transfer":
        return mup_transfer.build_study(mup_transfer.PRESETS[preset], "transformer", preset)[0]
    module = schedules if name == "schedules" else wsd
    return module.build_study(module.PRESETS[preset], "/tmp/fixed-out", preset)  # branches name the stable run's path


@pytest.mark.parametrize("key", PINNED)
def test_fingerprint_of_a_saved_study_is_unchanged(key):
    assert _study(key).fingerprint() == PINNED[key]


def test_fingerprint_ignores_the_preset_object_and_names():
    study = _study("chinchilla smoke")
    renamed = dataclasses.replace(study, meta={**study.meta, "preset": "another"}, tags={})
    assert renamed.fingerprint() == study.fingerprint()
    fewer = dataclasses.replace(study, runs=study.runs[1:], tags={})
    assert fewer.fingerprint() != study.fingerprint()
