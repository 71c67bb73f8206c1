"""What a study's analysis shares: which rows to analyse, the report file and its tables.

The analysis of a study reads only its results table (:mod:`experiments.lib.table`) and
writes ``report.md`` with :func:`write_report` (tables by :func:`markdown_table`, figures
from :mod:`experiments.lib.figures` linked below the text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lm.train.records import atomic_write


def check_level(level: float) -> float:
    """An interval coverage in (0, 1), e.g. 0.95; ValueError otherwise."""
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:  # NaN fails the comparison
        raise ValueError(f"level={level!r}: an interval coverage must be in (0, 1), e.g. 0.95")
    return float(level)


def _names(names: Sequence[str], limit: int = 10) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def analysis_table(table: pd.DataFrame, *, keep_diverged: bool = False,
                   require_all: bool = False) -> pd.DataFrame | None:
    """The rows the analysis reads, or None (analysis skipped); prints which runs are missing and why.

    Skipped while runs are "pending" (not trained yet: other shards, or an interrupted sweep)
    or "failed" (unreadable checkpoints: retried by the next call), when no run finished,
    and, with ``require_all``, when any run diverged. Otherwise the finished runs are
    analysed: "diverged" rows are left out (kept with ``keep_diverged``, for analyses that
    read divergence, e.g. the learning-rate landscape) and named.
    """
    status = table["status"] if len(table) else pd.Series([], dtype=str)
    by = {s: table.loc[status == s, "run"].tolist() for s in ("pending", "failed", "diverged", "complete")}
    n = len(table)
    if by["pending"] or by["failed"]:
        parts = []
        if by["pending"]:
            parts.append(f"{len(by['pending'])} of {n} runs pending (not trained yet; other shards or an interrupted "
                         f"sweep: rerun): {_names(by['pending'])}")
        if by["failed"]:
            parts.append(f"{len(by['failed'])} failed (unreadable checkpoints; rerun to retry): {_names(by['failed'])}")
        if by["diverged"]:
            parts.append(f"{len(by['diverged'])} diverged: {_names(by['diverged'])}")
        print("analysis skipped: " + "; ".join(parts))
        return None
    if not by["complete"]:
        print(f"analysis skipped: no run of the {n} finished without diverging")
        return None
    if by["diverged"] and require_all:
        print(f"analysis skipped: {len(by['diverged'])} of {n} runs diverged ({_names(by['diverged'])}) and this "
              "study's analysis needs every run; change the grid (e.g. a lower learning rate)")
        return None
    if by["diverged"]:
        how = "kept in the analysis" if keep_diverged else "left out of the analysis"
        print(f"analysing {len(by['complete'])} of {n} runs; {len(by['diverged'])} diverged ({how}): "
              f"{_names(by['diverged'])}")
        if not keep_diverged:
            return table[status == "complete"].reset_index(drop=True)
    return table


def note_left_out(report: str | Path | None, table: pd.DataFrame) -> None:
    """Append to ``report`` (report.md) a section naming the runs that diverged, if any."""
    if report is None or not len(table):
        return
    diverged = table.loc[table["status"] == "diverged", "run"].tolist()
    if not diverged:
        return
    lines = ["", "## Diverged runs", "",
             f"{len(diverged)} of {len(table)} runs diverged (non-finite loss) and have no final loss: "
             + ", ".join(f"`{r}`" for r in diverged) + ".", ""]
    report = Path(report)
    atomic_write(report, report.read_text() + "\n".join(lines))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """Lines of a markdown table; ``align`` has one letter per column, "l" or "r"."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align={align!r}: one of 'l'/'r' per column of {list(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def write_report(out: str | Path, lines: Sequence[str], figures: Sequence[Path] = ()) -> Path:
    """Write ``out/report.md``: the lines, then a link to every PNG of ``figures``."""
    path = Path(out) / "report.md"
    body = [*lines, "", *[f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"], ""]
    atomic_write(path, "\n".join(body))
    return path


def jsonable(obj):
    """``obj`` with numpy scalars as Python numbers and tuples as lists (for json.dumps)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
