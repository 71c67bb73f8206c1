"""tests/conftest.py: under xdist the fake-device subprocess modules are one unit of work."""

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
    # An xdist_group suffix (where xdist can still add it) keeps its meaning.
    assert sched._split_scope("tests/lm/test_model.py::test_a@other") == "other"
