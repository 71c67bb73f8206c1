"""--where / --holdout expressions (scaling.row_filter): the grammar selects the same rows as
pandas' own boolean indexing, and everything outside it (code) is refused without running
(issue 23, section 1)."""

import numpy as np
import pandas as pd
import pytest

from scaling import cli
from scaling.predict import select_rows
from scaling.row_filter import ExpressionError, row_mask
from tests.scaling.helpers import chinchilla_table

DF = pd.DataFrame({
    "N": [1e6, 5e7, 2e8, np.nan, 3e9, 5e7],
    "D": [3e9, 2e10, 1e9, 4e9, 6e10, 2e9],
    "dataset": ["rpj", "c4", "rpj", "x", "c4", "rpj"],
    "eval set": ["c4_val", "a", "c4_val_b", "z", "val_c4", "c4_val"],
    "k": [1, 2, 3, 4, 5, 6],
})

# (expression, the same selection written with pandas boolean indexing)
VALID = [
    ("N > 1e7", lambda d: d["N"] > 1e7),
    ("N>1e7&D<3e9", lambda d: (d["N"] > 1e7) & (d["D"] < 3e9)),
    ("N > 1e7 & D < 3e9 | k == 1", lambda d: ((d["N"] > 1e7) & (d["D"] < 3e9)) | (d["k"] == 1)),
    ("(N > 1e7) & ((D < 3e9) | (k == 1))", lambda d: (d["N"] > 1e7) & ((d["D"] < 3e9) | (d["k"] == 1))),
    ("N > 1e7 and D < 3e9 or k == 1", lambda d: ((d["N"] > 1e7) & (d["D"] < 3e9)) | (d["k"] == 1)),
    ("1e6 <= N < 1e8", lambda d: (d["N"] >= 1e6) & (d["N"] < 1e8)),
    ("1e9 < D <= 4e9 < 1e10", lambda d: (d["D"] > 1e9) & (d["D"] <= 4e9)),
    ("k != 3", lambda d: d["k"] != 3),
    ("k == 3.0", lambda d: d["k"] == 3),
    ("~(N > 1e7)", lambda d: ~(d["N"] > 1e7)),
    ("not N > 1e7", lambda d: ~(d["N"] > 1e7)),
    ("-k < -2", lambda d: -d["k"] < -2),
    ("k > -1e0", lambda d: d["k"] > -1),
    ("6 * N * D < 1e19", lambda d: 6 * d["N"] * d["D"] < 1e19),
    ("D / N >= 20 - 1", lambda d: d["D"] / d["N"] >= 19),
    ("k in [1, 3, 5]", lambda d: d["k"].isin([1, 3, 5])),
    ("k not in (1, 3)", lambda d: ~d["k"].isin([1, 3])),
    ("dataset == 'rpj'", lambda d: d["dataset"] == "rpj"),
    ('dataset != "c4"', lambda d: d["dataset"] != "c4"),
    ("dataset in ['c4', 'x'] & k > 2", lambda d: d["dataset"].isin(["c4", "x"]) & (d["k"] > 2)),
    ("`eval set` == 'a'", lambda d: d["eval set"] == "a"),
    ("`N` > 1e8", lambda d: d["N"] > 1e8),
    ("`eval set`.str.contains('c4_val')", lambda d: d["eval set"].str.contains("c4_val", regex=False)),
    ("`eval set`.str.startswith('c4') | dataset.str.endswith('4')",
     lambda d: d["eval set"].str.startswith("c4") | d["dataset"].str.endswith("4")),
    ("N != N", lambda d: d["N"].isna()),  # NaN compares unequal, as in pandas
    ("dataset == 'a & b' | k == 6", lambda d: (d["dataset"] == "a & b") | (d["k"] == 6)),
    ("dataset == 'x@y' or k == 2", lambda d: d["k"] == 2),
]


@pytest.mark.parametrize("expr, pandas_rows", VALID, ids=[e for e, _ in VALID])
def test_valid_expressions_select_what_pandas_indexing_selects(expr, pandas_rows):
    mask = row_mask(DF, expr)
    expected = pandas_rows(DF).fillna(False).astype(bool)
    pd.testing.assert_frame_equal(DF[mask], DF[expected])


# Payloads that would run code under pandas' eval; {m} is a marker file the code would create.
REFUSED = [
    ("@pd.io.common.os.system('touch {m}') == 0", "'@' (a Python variable) is not allowed"),
    ("(N > 0) & (@pd.io.common.os.system('touch {m}') == 0)", "'@' (a Python variable) is not allowed"),
    ("__import__('os').system('touch {m}') == 0", "a function call is not allowed"),
    ("N.__class__.__init__.__globals__['os'].system('touch {m}') == 0", "is not allowed"),
    ("N.values > 0", "an attribute (x.y) is not allowed"),
    ("D[0] > 0", "a subscript (x[...]) is not allowed"),
    ("(lambda: __import__('os').system('touch {m}'))() == 0", "is not allowed"),
    ("open('{m}', 'w') is None", "a function call is not allowed"),
    ("f'{{__import__(\"os\").system(\"touch {m}\")}}' == ''", "an f-string is not allowed"),
    ("(x := __import__('os').system('touch {m}')) == 0", "':=' is not allowed"),
    ("[__import__('os').system('touch {m}') for _ in [1]] == [0]", "a comprehension is not allowed"),
    ("{{open('{m}', 'w') for _ in [1]}} == 0", "a comprehension is not allowed"),
    ("__builtins__ > 0", "the name '__builtins__' is not allowed"),
    ("dataset.str.contains('{m}', regex=True)", "a function call is not allowed"),
    ("dataset.str.replace('a', '{m}') == 'b'", "a function call is not allowed"),
    ("N ** 10 ** 10 > 0", "'**' is not allowed"),
    ("N > 1 if True else 0", "'... if ... else ...' is not allowed"),
    ("N >", "not a valid expression"),
    ("nope > 1", "unknown column 'nope'; the table has ['N', 'D', 'dataset', 'eval set', 'k']"),
    ("N", "must be a condition on the columns"),
    ("N & D", "'N' is not a condition"),
    ("dataset < 1", "cannot compare"),
    ("k in dataset", "'in' needs a list [...] of values"),
    ("", "empty expression"),
]


@pytest.mark.parametrize("payload, message", REFUSED, ids=[p for p, _ in REFUSED])
def test_code_and_bad_expressions_are_refused_and_nothing_runs(tmp_path, payload, message):
    marker = tmp_path / "ran"
    expr = payload.format(m=marker)
    with pytest.raises(ExpressionError) as exc:
        row_mask(DF, expr)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="^--holdout "):
        select_rows(DF, holdout=expr)
    assert not marker.exists()


@pytest.mark.parametrize("flag, payload", [
    ("--where", "(N > 0) & (@pd.io.common.os.system('touch {m}') == 0)"),
    ("--holdout", "__import__('os').system('touch {m}') == 0"),
    ("--where", "N.__class__.__init__.__globals__['os'].system('touch {m}') == 0"),
])
def test_cli_refuses_code_exit_2_nothing_written(tmp_path, capsys, flag, payload):
    csv = tmp_path / "runs.csv"
    chinchilla_table(m=12, seed=1).to_csv(csv, index=False)
    marker, out = tmp_path / "ran", tmp_path / "out"
    rc = cli.main([str(csv), flag, payload.format(m=marker), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"python -m scaling.fit: error: {flag} ")
    assert not marker.exists() and not out.exists()
