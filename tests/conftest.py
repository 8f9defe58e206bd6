"""Fixtures shared by the test modules."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with JAX's float64 switched on (and off again afterwards)."""
    with jax.enable_x64(True):
        yield
