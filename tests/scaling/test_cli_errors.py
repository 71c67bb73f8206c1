"""python -m scaling.fit on bad tables and bad options: one line on stderr, exit status 2,
nothing written (issue 18, section 1-2), and options refused before any fitting."""

import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import scaling.fitting
from scaling import cli
from tests.scaling.helpers import chinchilla_table

GOOD = chinchilla_table(m=12, noise=1e-3, seed=3)


def _write(path, kind):
    """A table of the given kind at ``path``."""
    t = GOOD.copy()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "header_only":
        path.write_text("N,D,loss\n")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind != "missing":
        mutate = {
            "good": lambda t: t,
            "no_D": lambda t: t.drop(columns=["D"]),
            "nan_loss": lambda t: t.assign(loss=t["loss"].where(t.index != 4, np.nan)),
            "inf_loss": lambda t: t.assign(loss=t["loss"].where(t.index != 5, np.inf)),
            "zero_loss": lambda t: t.assign(loss=t["loss"].where(t.index != 2, 0.0)),
            "negative_loss": lambda t: t.assign(loss=t["loss"].where(t.index != 3, -1.0)),
            "string_N": lambda t: t.astype({"N": object}).assign(
                N=lambda d: d["N"].where(d.index != 1, "big")),
        }[kind]
        mutate(t).to_csv(path, index=False)
    return path


# (table kind, extra options, expected message, fitting allowed before the error)
CASES = [
    ("missing", [], "no such CSV file", True),
    ("empty", [], "empty file", True),
    ("header_only", [], "header only, no rows", True),
    ("garbage", [], "not a readable CSV", True),
    ("no_D", [], "missing column 'D'", True),
    ("nan_loss", [], r"NaN or inf in rows [4]", True),
    ("inf_loss", [], r"NaN or inf in rows [5]", True),
    ("zero_loss", [], r"non-positive in rows [2]", True),
    ("negative_loss", [], r"non-positive in rows [3]", True),
    ("string_N", [], "column 'N' (N) is not numeric: 'big' in rows [1]", True),
    ("good", ["--bootstrap", "-5"], "--bootstrap -5: must be 0 (none) or >= 2", False),
    ("good", ["--bootstrap", "1"], "--bootstrap 1: must be 0 (none) or >= 2", False),
    ("good", ["--bootstrap", "abc"], "invalid int value: 'abc'", False),
    ("good", ["--huber-delta", "0"], "--huber-delta 0.0: must be a finite number > 0", False),
    ("good", ["--huber-delta", "nan"], "--huber-delta nan: must be a finite number > 0", False),
    ("good", ["--fix", "E=abc"], "--fix 'E=abc': 'abc' is not a number", False),
    ("good", ["--fix", "E"], "--fix 'E': expected NAME=VALUE", False),
    ("good", ["--out", "FILE"], "exists and is not a directory", False),
    ("good", ["--level", "1.5"], "--level 1.5: must be in (0, 1)", False),
    ("good", ["--level", "0"], "--level 0.0: must be in (0, 1)", False),
    ("good", ["--law", "lr_opt", "--level", "-0.2"], "--level -0.2: must be in (0, 1)", False),
    ("good", ["--grid", "alpha=0.1,x"], "could not convert string to float: 'x'", False),
    ("good", ["--where", "nope > 1"], "--where 'nope > 1'", False),
    ("good", ["--where", "N >"], "--where 'N >'", False),
    ("good", ["--holdout", "N > 1e30"], "--holdout 'N > 1e30': selects no rows", False),
    ("good", ["--where", "@pd.io.common.os.system('true') == 0"], "'@' (a Python variable) is not allowed", False),
    ("good", ["--holdout", "N.__class__ == 0"], "an attribute (x.y) is not allowed", False),
    ("good", ["--where", ""], "--where '': empty expression", False),
    ("good", ["--where", "n > 1"], "unknown column 'n'; the table has ['N', 'D', 'loss']", False),
    ("good", ["--batch-unit", "bytes"], "argument --batch-unit: invalid choice: 'bytes'", False),
    ("good", ["--law", "bs_opt", "--batch-unit", "sequences"],
     "--batch-unit sequences needs --seq-len L (tokens per sequence, an integer >= 1)", False),
    ("good", ["--law", "bs_opt", "--batch-unit", "sequences", "--seq-len", "0"],
     "--seq-len 0: must be an integer >= 1", False),
    ("good", ["--law", "bs_opt", "--batch-unit", "sequences", "--seq-len", "2.5"],
     "argument --seq-len: invalid int value: '2.5'", False),
    ("good", ["--law", "bs_opt", "--seq-len", "128"], "--seq-len 128: only with --batch-unit sequences", False),
    ("good", ["--law", "lr_opt", "--batch-unit", "sequences", "--seq-len", "128"],
     "--batch-unit sequences: only for the batch-size laws bs_opt, bs_opt_nd, bs_opt_c", False),
    ("good", ["--predict", "absent.csv"], "--predict 'absent.csv': no such file", False),
    ("good", ["--law", "nope"], "invalid choice: 'nope'", False),
    ("good", ["--weights", "w"], "weights='w': no such column", True),
    ("good", ["--fix", "R_D_star=3"], "are not parameters of 'chinchilla'", True),
    ("good", ["--grid", "zeta=1,2"], "grid: ['zeta'] are not coordinates of 'chinchilla'", True),
]


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("kind, options, message, fits", CASES,
                         ids=[f"{k}{''.join(o)}" for k, o, _, _ in CASES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, kind, options,
                                                   message, fits):
    table = _write(tmp_path / "runs.csv", kind)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("existing result")
    (tmp_path / "FILE").write_text("a file")
    options = [str(tmp_path / o) if o == "FILE" else o for o in options]
    if "--out" not in options:
        options += ["--out", str(out)]
    if not fits:  # bad options are refused before any fitting
        monkeypatch.setattr(scaling.fitting, "fit_law", lambda *a, **k: pytest.fail("fitted"))
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    rc = cli.main([str(table), "--init-grid", "small", *options])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("python -m scaling.fit: error: ")
    assert message in err[0], err[0]
    assert _snapshot(tmp_path) == before


def test_exit_status_from_the_shell(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scaling.fit", str(tmp_path / "none.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m scaling.fit: error: table={str(tmp_path / 'none.csv')!r}: no such CSV file"]
    assert list(tmp_path.iterdir()) == []


# --- Writing the outputs fails: one line naming the folder and its free space, exit 1 -------

@pytest.fixture(scope="module")
def good_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "runs.csv"
    GOOD.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES])
@pytest.mark.parametrize("existing", [True, False], ids=["out_exists", "out_new"])
def test_write_failure_one_line_exit_1_outputs_untouched(tmp_path, monkeypatch, capsys, good_csv,
                                                         code, existing):
    from scaling import plots

    def full_disk(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(plots, "save_figure", full_disk)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "report.md").write_text("an earlier report")
    before = _snapshot(tmp_path)
    rc = cli.main([str(good_csv), "--init-grid", "small", "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 1 and len(err) == 1, captured.err
    assert err[0].startswith(f"python -m scaling.fit: error: cannot write the outputs to {str(out)!r}: "
                             f"{os.strerror(code)}")
    value, unit = re.search(r"; ([0-9.]+) (B|kB|MB|GB|TB) free there$", err[0]).groups()
    said = float(value) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    assert abs(said - shutil.disk_usage(tmp_path).free) <= 0.05 * said + 1e3, err[0]
    assert _snapshot(tmp_path) == before  # earlier outputs kept, no staging folder left


@pytest.mark.parametrize("law", ["chinchilla", "bs_opt"])
def test_real_os_error_a_folder_in_the_way(tmp_path, capsys, good_csv, law):
    from tests.scaling.test_hyperparams import sweep

    table = good_csv
    if law == "bs_opt":
        table = tmp_path / "sweep.csv"
        sweep().to_csv(table, index=False)
    out = tmp_path / "out"
    (out / "fit.json").mkdir(parents=True)  # a folder where fit.json must go
    before = _snapshot(tmp_path)
    rc = cli.main([str(table), "--law", law, "--init-grid", "small", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert f"cannot write the outputs to {str(out)!r}: a folder is in the way ({out / 'fit.json'})" in err[0]
    assert _snapshot(tmp_path) == before
