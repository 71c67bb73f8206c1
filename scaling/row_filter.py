"""Row conditions for ``--where`` / ``--holdout``: a small expression grammar, never ``eval``.

``pandas.DataFrame.eval`` reaches Python globals through ``@`` and runs any call (issue 23:
``--where "@pd.io.common.os.system('...')"`` ran a shell command). Here an expression is
parsed with :mod:`ast`, every node is checked against a whitelist, and the tree is evaluated
by hand on the table's columns. Grammar (pandas query syntax, a safe subset):

- operands: column names (plain, or in backticks: ```loss (val)```), numbers (``1e9``,
  ``-3``), quoted strings, ``True``/``False``;
- arithmetic on numbers and columns: ``+ - * /`` (e.g. ``6 * N * D < 1e20``);
- comparisons ``< <= > >= == !=``, chained (``1e6 <= N < 1e8``), ``in [..]``, ``not in [..]``;
- ``&``, ``|`` (with the precedence of ``and``/``or``, as in pandas), ``and``, ``or``,
  ``not``, ``~``, parentheses;
- ``COLUMN.str.contains('text')`` / ``.str.startswith`` / ``.str.endswith`` (literal text).

Anything else (calls, attributes, subscripts, lambdas, ``@``, f-strings, ``:=``,
comprehensions, double-underscore names) is refused with one line naming what was found.

Axis letters: m rows.
"""

from __future__ import annotations

import ast
import io
import operator
import re
import tokenize

import numpy as np
import pandas as pd

ALLOWED = ("column names, numbers, 'strings', + - * /, comparisons (< <= > >= == !=, chained), "
           "in [...], not in [...], & | ~ and or not, parentheses, COLUMN.str.contains('...')")
STR_METHODS = ("contains", "startswith", "endswith")
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv}
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.BitAnd, ast.BitOr,
          ast.UnaryOp, ast.Not, ast.Invert, ast.USub, ast.UAdd, ast.Compare, ast.In, ast.NotIn,
          ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, *_COMPARE, *_ARITH)


class ExpressionError(ValueError):
    """An expression outside the grammar, or one that does not fit the table (one line)."""


def row_mask(df: pd.DataFrame, expr: str) -> pd.Series:
    """Boolean mask [m] of the rows of ``df`` where ``expr`` holds; ExpressionError otherwise."""
    tree, names = parse(expr)
    try:
        value = _Evaluator(df, names).eval(tree.body)
    except RecursionError:
        raise ExpressionError("nested too deeply") from None
    if not isinstance(value, pd.Series) or value.dtype != bool:
        raise ExpressionError(f"must be a condition on the columns {list(df.columns)} "
                              "(a True/False per row)")
    return value


def parse(expr: str) -> tuple[ast.Expression, dict[str, str]]:
    """The checked syntax tree of ``expr`` and {placeholder name: backticked column name}."""
    if not isinstance(expr, str) or not expr.strip():
        raise ExpressionError("empty expression")
    names: dict[str, str] = {}

    def placeholder(m: re.Match) -> str:
        key = f"__backtick{len(names)}__"
        names[key] = m.group(1)
        return key

    text = re.sub(r"`([^`]*)`", placeholder, expr.strip())
    if "`" in text:
        raise ExpressionError("unmatched backtick")
    if "@" in _code_chars(text):
        raise ExpressionError("'@' (a Python variable) is not allowed; allowed: " + ALLOWED)
    try:
        text = _booleans_as_words(text)
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, tokenize.TokenError, ValueError, RecursionError, MemoryError) as exc:
        why = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        raise ExpressionError(f"not a valid expression ({why}); allowed: {ALLOWED}") from None
    _check(tree, names)
    return tree, names


def _code_chars(text: str) -> str:
    """``text`` without its string literals (so that '@' inside a quoted value is data)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "", text)


def _booleans_as_words(text: str) -> str:
    """``&``/``|`` as ``and``/``or`` outside strings: pandas gives them that precedence, so
    ``N > 1 & D < 2`` means ``(N > 1) & (D < 2)``."""
    toks = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in ("&", "|"):
            tok = tok._replace(type=tokenize.NAME, string=" and " if tok.string == "&" else " or ")
        toks.append((tok.type, tok.string))
    return tokenize.untokenize(toks)


def _check(tree: ast.Expression, names: dict[str, str]) -> None:
    """Refuse every node outside the grammar (before anything is evaluated)."""
    str_method_parts: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_str_method(node):
            str_method_parts.update((id(node.func), id(node.func.value)))
            continue
        if isinstance(node, ast.Attribute) and id(node) in str_method_parts:
            continue
        if isinstance(node, ast.Name) and node.id.startswith("__") and node.id not in names:
            raise ExpressionError(f"the name {node.id!r} is not allowed (double underscores); "
                                  f"allowed: {ALLOWED}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str)):
            raise ExpressionError(f"the constant {node.value!r} is not allowed; allowed: {ALLOWED}")
        if not isinstance(node, _NODES):
            raise ExpressionError(f"{_describe(node)} is not allowed; allowed: {ALLOWED}")


def _is_str_method(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr in STR_METHODS
            and isinstance(f.value, ast.Attribute) and f.value.attr == "str"
            and isinstance(f.value.value, ast.Name) and not node.keywords and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def _describe(node: ast.AST) -> str:
    kinds = {ast.Call: "a function call", ast.Attribute: "an attribute (x.y)",
             ast.Subscript: "a subscript (x[...])", ast.Lambda: "a lambda",
             ast.JoinedStr: "an f-string", ast.NamedExpr: "':='",
             ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension",
             ast.Pow: "'**'", ast.IfExp: "'... if ... else ...'", ast.Starred: "'*'"}
    for kind, what in kinds.items():
        if isinstance(node, kind):
            return what
    return f"{type(node).__name__!r}"


class _Evaluator:
    """Evaluates a checked tree on ``df``: Series [m] for columns, floats/strings for constants."""

    def __init__(self, df: pd.DataFrame, names: dict[str, str]):
        self.df, self.names = df, names

    def eval(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int):
                return node.value
            try:
                return float(node.value)
            except OverflowError:
                raise ExpressionError(f"the number {ast.unparse(node)[:20]}... is too large") from None
        if isinstance(node, ast.Name):
            return self.column(self.names.get(node.id, node.id))
        if isinstance(node, ast.BoolOp):
            values = [self.boolean(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            out = values[0]
            for v in values[1:]:
                out = combine(out, v)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return ~self.boolean(node.operand)
            value = self.number(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            left, right = self.number(node.left), self.number(node.right)
            with np.errstate(all="ignore"):
                return _ARITH[type(node.op)](left, right)
        if isinstance(node, ast.BinOp):  # & | nested where pandas would (e.g. inside ~(...))
            combine = operator.and_ if isinstance(node.op, ast.BitAnd) else operator.or_
            return combine(self.boolean(node.left), self.boolean(node.right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):  # a checked COLUMN.str.<method>('text')
            col = self.eval(node.func.value.value)
            text = node.args[0].value
            s = col.astype("string")
            found = {"contains": lambda: s.str.contains(text, regex=False),
                     "startswith": lambda: s.str.startswith(text),
                     "endswith": lambda: s.str.endswith(text)}[node.func.attr]()
            return found.fillna(False).astype(bool)
        raise ExpressionError(f"{_describe(node)} is not allowed here; allowed: {ALLOWED}")

    def column(self, name: str) -> pd.Series:
        if name not in self.df.columns:
            raise ExpressionError(f"unknown column {name!r}; the table has {list(self.df.columns)}")
        return self.df[name]

    def boolean(self, node: ast.AST) -> pd.Series:
        value = self.eval(node)
        if not (isinstance(value, pd.Series) and value.dtype == bool):
            raise ExpressionError(f"{ast.unparse(node)!r} is not a condition (True/False per row)")
        return value

    def number(self, node: ast.AST):
        value = self.eval(node)
        numeric = (isinstance(value, float) or isinstance(value, pd.Series)
                   and pd.api.types.is_numeric_dtype(value) and value.dtype != bool)
        if not numeric:
            raise ExpressionError(f"{ast.unparse(node)!r} is not a number or a numeric column")
        return value

    def compare(self, node: ast.Compare) -> pd.Series:
        out, left = None, self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right_node, (ast.List, ast.Tuple)):
                    raise ExpressionError(f"'in' needs a list [...] of values, not "
                                          f"{ast.unparse(right_node)!r}")
                values = [self.eval(v) for v in right_node.elts]
                if not isinstance(left, pd.Series) or any(isinstance(v, pd.Series) for v in values):
                    raise ExpressionError(f"'in' compares a column with a list of values: "
                                          f"{ast.unparse(node)!r}")
                part = left.isin(values)
                part = ~part if isinstance(op, ast.NotIn) else part
                right = None
            else:
                right = self.eval(right_node)
                if isinstance(right_node, (ast.List, ast.Tuple)):
                    raise ExpressionError("a list [...] only follows 'in' or 'not in'")
                try:
                    part = _COMPARE[type(op)](left, right)
                except TypeError as exc:
                    raise ExpressionError(f"cannot compare in {ast.unparse(node)!r} ({exc})") from None
            if not isinstance(part, pd.Series):
                part = pd.Series(bool(part), index=self.df.index)
            out = part if out is None else out & part
            left = right
        return out.astype(bool)
