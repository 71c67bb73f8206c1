"""experiments.lib.command and report: the flags every study keeps, out-dir defaults, report and figure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import architectures, chinchilla, data_constrained, lib, lr_scaling, mup_transfer, schedules, wsd
from scaling.plots import save_figure

SHARED = {"--preset", "--out", "--analysis-only", "--skip-analysis", "--no-progress", "--data", "--max-epochs", "-h",
          "--help"}
SHARD = {"--shard", "--tables"}  # shard tables from other hosts go with --shard
WSD = {"--method", "--cooldown-fraction", "--cooldown-shape"}  # one stable run per model + cooldown branches
# the command lines of the studies (those before they shared this module, plus --shard for the
# data-constrained and learning-rate grids, whose runs are independent like the others')
FLAGS = {
    "architectures": SHARED | SHARD | WSD | {"--bootstrap"},
    "data_constrained": SHARED | SHARD | {"--bootstrap", "--loss-increase"},
    "lr_scaling": SHARED | SHARD | {"--bootstrap"},
    "wsd": SHARED | {"--loss"},
    "schedules": SHARED | {"--bootstrap"},  # no --shard: the branches need the constant run's checkpoints
    "mup_transfer": SHARED | SHARD | {"--family", "--zero-readout", "--random-readout", "--seeds",
                                          "--bootstrap"},
    "chinchilla": SHARED | SHARD | WSD | {"--bootstrap", "--sizes", "--budgets", "--learning-rate", "--loss"},
}


def _parser(module, monkeypatch):
    """The parser a study's main builds (captured, main is stopped before it parses)."""
    seen = {}
    real = lib.command.study_parser

    def spy(*args, **kwargs):
        seen["parser"] = p = real(*args, **kwargs)
        original = p.parse_args

        def stop(argv=None, namespace=None):
            seen["args"] = original(argv, namespace)
            raise KeyboardInterrupt

        p.parse_args = stop
        return p

    monkeypatch.setattr(lib.command, "study_parser", spy)
    with pytest.raises(KeyboardInterrupt):
        module.main(["--preset", "smoke"])
    return seen["parser"], seen["args"]


@pytest.mark.parametrize("module", [architectures, chinchilla, data_constrained, lr_scaling, mup_transfer, schedules,
                                    wsd])
def test_each_study_keeps_its_flags_and_default_out(module, monkeypatch):
    name = module.__name__.rsplit(".", 1)[1]
    parser, args = _parser(module, monkeypatch)
    assert set(parser._option_string_actions) == FLAGS[name]
    assert parser.prog == f"python -m experiments.{name}"
    assert sorted(parser._option_string_actions["--preset"].choices) == sorted(module.PRESETS)
    assert lib.command.out_dir(name, args) == Path("runs") / name / "smoke"
    assert args.data == "stdlib" and args.max_epochs == (100.0 if name == "data_constrained" else 1.0)


def test_out_flag_wins_and_bad_values_are_usage_errors(tmp_path, capsys):
    p = lib.command.study_parser("x", None, {"smoke": 1, "default": 2}, shard=True)
    args = p.parse_args(["--out", str(tmp_path), "--shard", "3/2"])
    assert lib.command.out_dir("x", args) == tmp_path and args.preset == "default"
    with pytest.raises(SystemExit) as exc:
        with lib.command.cli_errors(p):
            lib.study.parse_shard(args.shard)
    assert exc.value.code == 2 and "--shard='3/2'" in capsys.readouterr().err


def test_markdown_table_and_report(tmp_path):
    lines = lib.markdown_table(["a", "b"], [("x", 1.5), ("y", "2")], align="lr")
    assert lines == ["| a | b |", "|---|---:|", "| x | 1.5 |", "| y | 2 |"]
    with pytest.raises(ValueError, match="align"):
        lib.markdown_table(["a", "b"], [], align="l")
    figs = [tmp_path / "f.png", tmp_path / "f.svg"]
    path = lib.write_report(tmp_path, ["# T", *lines], figs)
    assert path.read_text() == "# T\n" + "\n".join(lines) + "\n\n![f](f.png)\n"


def test_save_figure_writes_png_and_svg(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    paths = save_figure(fig, tmp_path, "curve")
    assert [p.name for p in paths] == ["curve.png", "curve.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:500]
