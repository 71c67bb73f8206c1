"""Shared test set-up.

* float32 parity tests run with the highest matmul precision;
* every process of the session (this one, the xdist workers, the subprocesses the tests
  start: CLIs, fake-device workers, notebook kernels) shares one JAX persistent
  compilation cache (:mod:`lm.compile_cache`) in a temporary folder made by the controller
  and removed when it ends (never the user's cache): the environment variables of
  :func:`lm.compile_cache.settings`, inherited by every child, give it to JAX on import, so
  a program compiled once (a smoke model's train step, the reference of a kill/resume
  test) is loaded, not compiled, everywhere else. ``SCALELAB_TEST_JAX_CACHE=DIR`` keeps it
  in DIR across sessions instead;
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

import os
import shutil
import tempfile

from lm import compile_cache

# The controller (no xdist worker id) makes the session's cache before JAX is imported;
# workers and subprocesses inherit the variables.
_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ:
    _keep = os.environ.get("SCALELAB_TEST_JAX_CACHE")
    _OWN_CACHE = None if _keep else tempfile.mkdtemp(prefix="scalelab-test-jax-cache-")
    os.environ.update(compile_cache.settings(_keep or _OWN_CACHE))

import jax  # noqa: E402  (after the cache's variables)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
compile_cache.enable(os.environ[compile_cache.ENV])  # in case JAX was imported before the variables

SERIAL_MODULES = ("tests/lm/test_kernels_on_mesh.py", "tests/lm/test_sharding.py")
SERIAL_GROUP = "fake_device_subprocesses"


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
