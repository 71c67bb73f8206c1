"""Shared test set-up.

* float32 parity tests run with the highest matmul precision;
* every process of the session (this one, the xdist workers, the subprocesses the tests
  start: CLIs, fake-device workers, notebook kernels) shares one JAX persistent
  compilation cache (:mod:`lm.train.compile_cache`), the suite's own (:func:`session_cache`:
  ``$XDG_CACHE_HOME/scalelab/test-jax``, beside the user's cache, never in it): the environment
  variables of :func:`lm.train.compile_cache.settings`, inherited by every child, give it to JAX
  on import, so a program compiled once (a smoke model's train step, the reference of a
  kill/resume test) is loaded, not compiled, everywhere else, and in the next session:
  a rerun of the suite skips the compiles it has done before. The cache keys a program on its
  HLO, options and JAX/XLA versions, so a changed test or library compiles anew; a loaded
  program computes what the compile gives (tests/lm/test_compile_cache.py). ``SCALELAB_TEST_JAX_CACHE=DIR`` puts it in DIR;
  ``SCALELAB_TEST_JAX_CACHE=off`` gives the session a fresh temporary one, removed when it
  ends (a cold run), as does a suite folder that cannot be written;
* every process compiles at XLA's fastest backend level (:data:`FAST_COMPILE_FLAG`; a level
  set in ``XLA_FLAGS`` wins). Measured on a 2-core AMD EPYC, the whole suite cold (an empty
  cache): 1229 s, 2247 CPU s at the default level; 894-927 s, 1610-1678 CPU s at level 0
  (warm: 510 s and 538 s);
* under pytest-xdist (``-n 2``; pyproject's addopts give ``--dist loadgroup``) the test
  modules that start fake-device subprocesses (:data:`SERIAL_MODULES`, each a module
  fixture of minutes that alone keeps both cores busy) are ONE unit of work: one worker
  runs them, one module after the other, so each fixture is built once and the two never
  run at the same time. A module that defines a module- or session-scoped fixture (a
  reference study, a trained run that several tests read) is one unit too, so that fixture
  is built once, not once per worker (:func:`work_unit`); so is a module that says
  ``ONE_WORK_UNIT = True``, whose tests build the same programs (one process compiles and
  traces them once, in the module's order). Every other test is a unit of its
  own, handed to whichever worker is free (as ``--dist load``); xdist hands out the units
  with the most tests first, so the single tests fill the end.

Why not ``pytest.mark.xdist_group``: xdist 3.8 passes the mark's group to the scheduler by
appending it to the test's node id, which pytest 9.2's structured node ids ignore; the
mark is then silently dropped (pytest-dev/pytest-xdist#1386). The controller sees only
node ids, so the group is read from the module path instead (:func:`work_unit`).
"""

import functools
import os
import re
import shutil
import tempfile
from pathlib import Path

from lm.train import compile_cache

TEST_CACHE_ENV = "SCALELAB_TEST_JAX_CACHE"


def session_cache(env=None) -> str | None:
    """The suite's compile cache folder kept across sessions (module docstring); None: a fresh one."""
    env = os.environ if env is None else env
    if TEST_CACHE_ENV in env:
        folder = env[TEST_CACHE_ENV].strip()
        return None if folder.lower() in compile_cache.OFF else os.path.expanduser(folder)
    return os.path.join(compile_cache.scalelab_cache_root(env), "test-jax")


# The suite's programs are small and short-lived: XLA compiles them at its lowest backend
# optimisation level (a compile option, not the math; the fake-device workers and the coordinate
# check already did). Measured cold on 2 cores, four heavy tests (mup_transfer's tiny grid,
# lr_scaling's smoke grid, bf16, upcycle): 212 CPU s at the default level, 120 at level 0. A level
# set in XLA_FLAGS wins; every process of the session inherits the variable.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def xla_flags(env) -> str:
    """``env``'s XLA_FLAGS with :data:`FAST_COMPILE_FLAG` added, unless they set a level already."""
    flags = env.get("XLA_FLAGS", "")
    return flags if "xla_backend_optimization_level" in flags else f"{flags} {FAST_COMPILE_FLAG}".strip()


os.environ["XLA_FLAGS"] = xla_flags(os.environ)

# The controller (no xdist worker id) sets the session's cache before JAX is imported;
# workers and subprocesses inherit the variables.
_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ:
    _keep = session_cache()
    if _keep is not None:
        try:
            os.makedirs(_keep, exist_ok=True)
            if not os.access(_keep, os.W_OK | os.X_OK):
                raise PermissionError(_keep)
        except OSError:  # a folder that cannot be written (a read-only home): a fresh one, as =off
            _keep = None
    _OWN_CACHE = None if _keep else tempfile.mkdtemp(prefix="scalelab-test-jax-cache-")
    os.environ.update(compile_cache.settings(_keep or _OWN_CACHE))

import jax  # noqa: E402  (after the cache's variables)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
compile_cache.enable(os.environ[compile_cache.ENV])  # in case JAX was imported before the variables

SERIAL_MODULES = ("tests/lm/test_kernels_on_mesh.py", "tests/lm/test_sharding.py")
SERIAL_GROUP = "fake_device_subprocesses"
ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURE = re.compile(r"""scope\s*=\s*["'](module|session)["']|^ONE_WORK_UNIT\s*=\s*True""", re.M)


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@functools.cache
def shares_a_fixture(module: str) -> bool:
    """Whether the test module (a path from the root) defines a module- or session-scoped fixture, or
    says ``ONE_WORK_UNIT = True`` (its tests share programs through the process's compile caches)."""
    path = ROOT / module
    return path.is_file() and SHARED_FIXTURE.search(path.read_text()) is not None


def work_unit(nodeid: str) -> str | None:
    """The shared unit of work of a test id: :data:`SERIAL_GROUP`, its module's path (a module
    sharing a fixture) or None (a unit of its own)."""
    module = nodeid.split("::")[0]
    if module in SERIAL_MODULES:
        return SERIAL_GROUP
    return module if shares_a_fixture(module) else None


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the units of :func:`work_unit` (module docstring)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialModulesScheduling(LoadGroupScheduling):
        # LoadScopeScheduling sends each scope whole to one worker, the largest scope first.
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid) or super()._split_scope(nodeid)

    return SerialModulesScheduling(config, log)
