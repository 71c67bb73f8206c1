"""The registry of mixer families (``lm/model/families.py``): entry points, one-line errors, the settings
mapping of ``ModelConfig``, the sharding rules a family brings, and no import circle in the model room."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import train as train_cli
from layers.linear_attention import LinearAttentionConfig
from layers.recurrent_block import RecurrentConfig
from lm.model import parametrization
from lm.train import sharding
from lm.model.config import ModelConfig, RunConfig
from lm.model.families import MIXERS, MixerSpec, register_mixer
from tests.lm.conftest import TOY_MODULE, install_toy_family

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model.d_model", "16", "--model.num_layers", "2", "--model.num_heads", "2", "--data.source", "synthetic",
        "--train.steps", "1", "--train.progress", "false"]


def test_an_unknown_letter_or_family_is_one_line_naming_the_registered_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"ModelConfig.pattern='AQ': unknown mixer letter 'Q'; allowed \(registered\) "
                                         r"letters are \[.*'A'.*'W'\]"):
        ModelConfig(pattern="AQ")
    with pytest.raises(ValueError, match=r"ModelConfig.families: unknown mixer family 'nope'; allowed "
                                         r"\(registered\) families are \[.*'attention'.*'rnn'.*\]"):
        ModelConfig(families={"nope": RecurrentConfig()})
    with pytest.raises(ValueError, match=r"ModelConfig.families\['rnn'\]=.*: must be a RecurrentConfig"):
        ModelConfig(pattern="R", families={"rnn": LinearAttentionConfig()})
    with pytest.raises(ValueError, match=r"ModelConfig.families\['attention'\]: family 'attention' has no settings"):
        RunConfig.from_dict({"model": {"families": {"attention": {}}}})
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--out", str(tmp_path), "--model.pattern", "AQ", *TINY])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "unknown mixer letter 'Q'" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_family_that_does_not_import_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken-0.1.dist-info").mkdir()
    (tmp_path / "broken-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (tmp_path / "broken-0.1.dist-info" / "entry_points.txt").write_text("[scalelab.mixers]\nQ = no_such_module:SPEC\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "Q" in MIXERS.letters()  # listed without loading
    with pytest.raises(ValueError, match=r"entry point Q = 'no_such_module:SPEC' of group 'scalelab.mixers' failed "
                                         r"to load: ModuleNotFoundError"):
        ModelConfig(pattern="AQ")
    with pytest.raises(SystemExit) as stop:  # the command line still starts, and names the broken plugin
        train_cli.main(["--out", str(tmp_path / "out"), "--model.pattern", "AQ", *TINY])
    assert stop.value.code == 2 and "entry point Q = 'no_such_module:SPEC'" in capsys.readouterr().err


def test_families_hold_the_used_settings_and_set_unused_ones():
    plain = ModelConfig(pattern="A")
    assert plain.families == {} and ModelConfig(pattern="A", families={"rnn": RecurrentConfig()}) == plain
    assert ModelConfig(pattern="RL").families == {"la": LinearAttentionConfig(), "rnn": RecurrentConfig()}
    kept = ModelConfig(pattern="A", families={"rnn": RecurrentConfig(width=64)})  # unused, but set: kept
    assert kept.families["rnn"].width == 64 and dataclasses.replace(kept, pattern="R").families["rnn"].width == 64
    assert hash(kept) == hash(ModelConfig(pattern="A", families={"rnn": RecurrentConfig(width=64)}))
    with pytest.raises(TypeError, match="read-only"):
        kept.families["rnn"] = RecurrentConfig()
    assert RunConfig.from_dict(json.loads(RunConfig(model=kept).to_json())).model == kept


def test_a_family_brings_its_logical_axes_and_width_fields(toy_family):
    cfg = ModelConfig(d_model=16, pattern="TR", num_heads=2, families={"toy": MIXERS.family("toy").config(width=8)})
    table = dict(sharding.rules())
    assert table["toy"] == ("tensor",) and table["rnn"] == ("tensor",) and table["heads"] == ("tensor",)
    wide = parametrization.at_width(dataclasses.replace(cfg, families={**cfg.families, "rnn": RecurrentConfig(width=16)}),
                                    48)
    assert (wide.families["toy"].width, wide.families["rnn"].width) == (24, 48)
    clash = dataclasses.replace(MIXERS["T"], name="clash", config=None, rules=(("toy", ("expert",)),))
    with pytest.raises(ValueError, match=r"maps logical axis 'toy' to \('expert',\), another family to \('tensor',\)"):
        register_mixer("Z", clash)
    assert "Z" not in MIXERS


# ----------------------------------------------------------------------------- imports


def _module_name(path: Path) -> str:
    """``lm/a/b.py`` -> ``lm.a.b`` (a package's ``__init__.py`` -> the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lm_imports(path: Path) -> set[str]:
    """The ``lm`` modules ``path`` imports when it runs (module level or in a function), not the
    type-only imports under ``if TYPE_CHECKING:``; ``from lm.pkg import mod`` names the module."""
    tree = ast.parse(path.read_text())
    skip = {id(node) for top in ast.walk(tree) if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
            for node in ast.walk(top)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lm":
            folder = ROOT.joinpath(*node.module.split("."))
            out.update(f"{node.module}.{a.name}" if (folder / f"{a.name}.py").exists() else node.module
                       for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "lm")
    return out


def test_the_model_room_has_no_import_circle_and_config_does_not_import_the_families():
    graph = {_module_name(p): _lm_imports(p) for p in (ROOT / "lm").rglob("*.py")}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert "lm.model.mixers" not in reach("lm.model.config") and "lm.model.counting" not in reach("lm.model.config")
    assert graph["lm.model.families"] == set()  # the registry knows no module of lm
    for module in ("lm.model.config", "lm.model.mixers", "lm.model.counting", "lm.model.parametrization", "lm.model.families", "lm.model.config_schema"):
        assert module not in reach(module), f"{module} imports itself through {sorted(reach(module))}"


def test_the_toy_family_loads_lazily_from_its_entry_point(tmp_path):
    site = install_toy_family(tmp_path / "site")
    code = ("import sys; from lm.model.config import ModelConfig; from lm.model.families import MIXERS; "
            f"assert {TOY_MODULE!r} not in sys.modules and 'T' in MIXERS.letters(); "
            f"c = ModelConfig(pattern='TA'); assert {TOY_MODULE!r} in sys.modules; print(c.families['toy'])")
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{site}"})
    assert done.stdout.strip() == "ToyConfig(width=8, gate=False)"


def test_a_spec_is_a_frozen_value():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MIXERS["A"].name = "x"
    assert isinstance(MIXERS["A"], MixerSpec) and MIXERS["A"].build is not MIXERS["W"].build
