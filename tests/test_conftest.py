"""tests/conftest.py: under xdist the fake-device subprocess modules are one unit of work, and a
module sharing a fixture is one unit; the suite compiles at XLA's fastest level."""

import os
from pathlib import Path

from tests import conftest

ROOT = Path(__file__).resolve().parents[1]


def test_serial_modules_exist_and_are_one_unit_of_work():
    for module in conftest.SERIAL_MODULES:
        assert (ROOT / module).is_file(), module
    ids = ["tests/lm/test_kernels_on_mesh.py::test_lowers_for_accelerators_with_the_kernels[gla|8x1x1x1|tpu|train]",
           "tests/lm/test_sharding.py::test_sharded_train_step_equals_single_device[moe-mesh3]"]
    assert {conftest.work_unit(i) for i in ids} == {conftest.SERIAL_GROUP}
    assert conftest.work_unit("tests/lm/test_model.py::test_forward") is None


def test_a_module_sharing_a_fixture_is_one_unit_of_work(tmp_path, monkeypatch):
    """Its module-scoped fixture is then built by one worker, not by each."""
    module = "tests/experiments/test_chinchilla.py"  # the reference study, read by three tests
    assert conftest.work_unit(f"{module}::test_killed_sweep_resumes_to_the_same_table") == module
    assert conftest.work_unit(f"{module}::test_grid_spends_each_budget_exactly[smoke]") == module
    module = "tests/experiments/test_coord_check.py"  # ONE_WORK_UNIT: programs shared by its tests
    assert conftest.work_unit(f"{module}::test_smoke_coord_check") == module
    # Read from the module's text: on this fake tree, only the modules with such a fixture.
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    conftest.shares_a_fixture.cache_clear()
    monkeypatch.setattr(conftest, "shares_a_fixture", conftest.shares_a_fixture.__wrapped__)
    (tmp_path / "test_a.py").write_text("@pytest.fixture(scope='session')\ndef f(): pass\n")
    (tmp_path / "test_b.py").write_text('@pytest.fixture( scope = "module")\ndef f(): pass\n')
    (tmp_path / "test_c.py").write_text("@pytest.fixture\ndef f(): pass\n")
    (tmp_path / "test_d.py").write_text("@pytest.fixture(scope='function')\ndef f(): pass\n")
    (tmp_path / "test_e.py").write_text("import pytest\n\nONE_WORK_UNIT = True  # shared programs\n")
    (tmp_path / "test_f.py").write_text("def test_x():\n    ONE_WORK_UNIT = True\n")  # not at module level
    assert [conftest.work_unit(f"test_{m}.py::t") for m in "abcdef"] == [
        "test_a.py", "test_b.py", None, None, "test_e.py", None]


def test_scheduler_groups_the_serial_modules_and_hands_out_the_rest_alone(pytestconfig, monkeypatch):
    """The scheduler the hook gives for ``--dist loadgroup`` (pyproject's addopts), on test ids."""
    addopts = " ".join(pytestconfig.getini("addopts"))
    assert "--dist loadgroup" in addopts, addopts
    # The controller's options under -n 2 (an xdist worker, running this, has dist "no").
    monkeypatch.setattr(pytestconfig.option, "dist", "loadgroup")
    monkeypatch.setattr(pytestconfig.option, "tx", ["popen", "popen"])
    sched = conftest.pytest_xdist_make_scheduler(pytestconfig, None)
    serial = [f"{m}::test_{i}" for m in conftest.SERIAL_MODULES for i in range(3)]
    others = ["tests/lm/test_model.py::test_a", "tests/lm/test_model.py::test_b[x]", "tests/layers/test_mla.py::test_c"]
    assert {sched._split_scope(i) for i in serial} == {conftest.SERIAL_GROUP}
    assert [sched._split_scope(i) for i in others] == others  # each its own unit
    shared = ["tests/experiments/test_stops.py::test_a", "tests/experiments/test_stops.py::test_b[x]"]
    assert {sched._split_scope(i) for i in shared} == {"tests/experiments/test_stops.py"}
    # An xdist_group suffix (where xdist can still add it) keeps its meaning.
    assert sched._split_scope("tests/lm/test_model.py::test_a@other") == "other"


def test_the_suite_compiles_at_the_fastest_level_unless_told_otherwise():
    assert conftest.FAST_COMPILE_FLAG in os.environ["XLA_FLAGS"]  # this process and every child it starts
    assert conftest.xla_flags({}) == conftest.FAST_COMPILE_FLAG
    assert conftest.xla_flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) == (
        f"--xla_force_host_platform_device_count=8 {conftest.FAST_COMPILE_FLAG}")
    assert conftest.xla_flags({"XLA_FLAGS": "--xla_backend_optimization_level=3"}) == "--xla_backend_optimization_level=3"
