"""Shared test set-up.

* float32 parity tests run with the highest matmul precision;
* under pytest-xdist (``-n 2``; pyproject's addopts give ``--dist loadgroup``) the test
  modules that start fake-device subprocesses (:data:`SERIAL_MODULES`, each a module
  fixture of minutes that alone keeps both cores busy) are ONE unit of work: one worker
  runs them, one module after the other, so each fixture is built once and the two never
  run at the same time. Every other test is a unit of its own, handed to whichever worker
  is free (as ``--dist load``).

Why not ``pytest.mark.xdist_group``: xdist 3.8 passes the mark's group to the scheduler by
appending it to the test's node id, which pytest 9.2's structured node ids ignore; the
mark is then silently dropped (pytest-dev/pytest-xdist#1386). The controller sees only
node ids, so the group is read from the module path instead (:func:`work_unit`).
"""

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

SERIAL_MODULES = ("tests/lm/test_kernels_on_mesh.py", "tests/lm/test_sharding.py")
SERIAL_GROUP = "fake_device_subprocesses"


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)


def work_unit(nodeid: str) -> str | None:
    """The shared unit of work of a test id (:data:`SERIAL_GROUP`), or None: a unit of its own."""
    return SERIAL_GROUP if nodeid.split("::")[0] in SERIAL_MODULES else None


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the :data:`SERIAL_MODULES` as one group (module docstring)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialModulesScheduling(LoadGroupScheduling):
        # LoadScopeScheduling sends each scope whole to one worker, the largest scope first.
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid) or super()._split_scope(nodeid)

    return SerialModulesScheduling(config, log)
