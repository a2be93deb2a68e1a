"""Every test runs in float64 with strict dtype promotion: mixing dtypes must be deliberate."""

import jax
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Fresh PRNG keys on demand: `getkey()` returns a new key each call."""
    key = jax.random.key(0)

    def _getkey():
        nonlocal key
        key, sub = jax.random.split(key)
        return sub

    return _getkey
