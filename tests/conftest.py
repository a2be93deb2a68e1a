"""Every test runs in float64 with strict dtype promotion: mixing dtypes must be deliberate.

How to compare numbers (bits vs ulps) is in tests/README.md.
"""

import os


# Compilation is most of this suite's time (XLA's backend compile alone is ~85% of the CPU
# seconds). XLA's cheaper backend optimisation cuts about 15% of the CPU time, and the CPU
# backend's older elemental fusion emitters compile 40-50% faster than its MLIR fusion
# emitters on our Diffrax-heavy programs. Both change how fast the compiled code runs, not what
# it computes (no fast math), and every comparison between two programs is up to ulps anyway
# (tests/README.md). Set before JAX starts its backend; subprocess tests inherit it.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false",
)

import jax  # noqa: E402
import pytest  # noqa: E402


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
