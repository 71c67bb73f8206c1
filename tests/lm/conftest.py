"""The toy mixer family installed as a test-only distribution, as a plugin is installed.

:func:`install_toy_family` writes, into a directory, what ``pip install`` of a distribution
holding ``tests/lm/toy_mixer.py`` would: the module (as the top-level ``scalelab_toy_mixer``)
and ``scalelab_toy_mixer-0.1.dist-info/`` with ``METADATA`` and ``entry_points.txt`` declaring
``T = scalelab_toy_mixer:SPEC`` in group ``scalelab.mixers``. With the directory on ``sys.path``
(or ``PYTHONPATH`` of a subprocess), ``importlib.metadata`` sees the distribution and the
registry (``lm.model.families``) loads the family the first time a config names "T" or "toy". No
network, no pip.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TOY_MODULE = "scalelab_toy_mixer"
TOY_DIST = "scalelab_toy_mixer-0.1.dist-info"


def install_toy_family(root: Path) -> Path:
    """Install the toy family into ``root`` (created); returns ``root``, the directory to put on the path."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("toy_mixer.py"), root / f"{TOY_MODULE}.py")
    info = root / TOY_DIST
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scalelab-toy-mixer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[scalelab.mixers]\nT = {TOY_MODULE}:SPEC\n")
    return root


@pytest.fixture(scope="session")
def toy_family(tmp_path_factory) -> Path:
    """The toy family installed for this process (and the directory, for subprocesses' PYTHONPATH)."""
    root = install_toy_family(tmp_path_factory.mktemp("site") / "site-packages")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
