"""Every notebook executes on CPU at smoke size (SCALELAB_SMOKE=1) and its .py / .ipynb pair is in sync.

The notebooks are paired jupytext files: ``notebooks/<name>.py`` (percent format, the
source reviewed in diffs) and ``notebooks/<name>.ipynb`` (for Colab); regenerate the
latter with ``python notebooks/sync.py --execute``.
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("notebook_sync", ROOT / "notebooks" / "sync.py")
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)

NAMES = ("quickstart", "fit_your_own_scaling_law", "architecture_comparison", "mup_wind_tunnel", "loss_curves")


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in sync.notebook_paths()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_py_and_ipynb_in_sync(name):
    py = sync.read_py(ROOT / "notebooks" / f"{name}.py")
    ipynb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert _cells(py) == _cells(ipynb), f"{name}.ipynb is stale: run python notebooks/sync.py --execute"
    assert ipynb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_at_smoke_size(name, tmp_path, monkeypatch):
    # the notebooks keep their outputs in tempfile.mkdtemp() folders for the reader to open; the
    # kernel inherits TMPDIR, so under the tests those land in pytest's tmp_path, not /tmp
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = sync.execute(sync.read_py(ROOT / "notebooks" / f"{name}.py"), smoke=True)  # raises on any failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert any(o.output_type in ("display_data", "execute_result") for c in code for o in c.outputs)
