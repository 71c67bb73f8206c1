"""Shared test set-up.

* float32 parity tests run with the highest matmul precision;
* under pytest-xdist (``-n 2``, with ``--dist loadgroup`` from pyproject's addopts) the tests
  of one module that share a module-scoped fixture (a subprocess sweep on fake devices, a
  trained study) run on one worker, so the fixture is built once and not once per worker.
"""

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
    return jax.random.PRNGKey(0)


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope in ("module", "package") for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
