"""Regenerate the paired ``.ipynb`` of every notebook from its jupytext ``.py`` (percent format).

``python notebooks/sync.py [--execute]``: writes ``<name>.ipynb`` next to each
``<name>.py`` (this file excepted); ``--execute`` runs each notebook with nbclient at smoke
size (``SCALELAB_SMOKE=1``) on the local ``python3`` kernel and stores its outputs.
tests/notebooks/test_notebooks.py uses :func:`notebook_paths`, :func:`read_py` and
:func:`execute`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent


def notebook_paths() -> list[Path]:
    """The jupytext sources: every ``notebooks/*.py`` but this script."""
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))


def read_py(path: Path) -> nbformat.NotebookNode:
    return jupytext.read(path, fmt="py:percent")


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE, timeout: int = 600,
            smoke: bool = True) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom on the python3 kernel (SCALELAB_SMOKE=1 when ``smoke``); raise on a failing cell."""
    from nbclient import NotebookClient

    old = os.environ.get("SCALELAB_SMOKE")
    if smoke:
        os.environ["SCALELAB_SMOKE"] = "1"  # inherited by the kernel process
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        if old is None:
            os.environ.pop("SCALELAB_SMOKE", None)
        else:
            os.environ["SCALELAB_SMOKE"] = old
    return nb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--execute", action="store_true")
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    a = p.parse_args(argv)
    for path in notebook_paths():
        if a.names and path.stem not in a.names:
            continue
        nb = read_py(path)
        t0 = time.perf_counter()
        if a.execute:
            execute(nb)
        jupytext.write(nb, path.with_suffix(".ipynb"), fmt="ipynb")
        print(f"{path.with_suffix('.ipynb').name}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
