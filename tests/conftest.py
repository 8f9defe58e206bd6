"""Fixtures shared by the test modules, and one XLA compilation cache for the whole run."""

import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """Most of the suite's time is XLA compiling the fits' programs, and several tests compile
    the same program more than once, in one process (JAX's in-memory cache knows functions, not
    programs) or in several: a persistent compilation cache in a fresh temporary folder, shared
    by the xdist workers and the notebook kernels and ``jkin`` subprocesses they start (they
    inherit the environment), compiles each once per run (session 32: notebook 03 302 -> 262
    s, the CLI end to end 166 -> 113 s, the blind-restart test 133 -> 98 s). A cached program
    is the one XLA would compile again, so what the tests check is unchanged; the folder starts
    empty and is removed at the end, so no run sees another's programs. A cache the caller set
    (``JAX_COMPILATION_CACHE_DIR``) is used as it is."""
    if hasattr(config, "workerinput") or os.environ.get(_CACHE_ENV):
        return  # an xdist worker: the controller set it up (workers inherit its environment)
    path = tempfile.mkdtemp(prefix="jkin-tests-xla-")
    os.environ[_CACHE_ENV] = path  # for the processes started from here on
    jax.config.update("jax_compilation_cache_dir", path)  # this one imported jax already
    config.jkin_xla_cache = path


def pytest_unconfigure(config):
    path = getattr(config, "jkin_xla_cache", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def x64():
    """Run the test with JAX's float64 switched on (and off again afterwards)."""
    with jax.enable_x64(True):
        yield
