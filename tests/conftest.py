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

# Tests compile many of the same programs (two pytest workers, and subprocess tests that start
# JAX afresh): a compilation cache shared by all of one run's processes cut ~8% of the suite's
# time. Keyed by the program, JAX's version and flags, so a stale entry is never used wrongly;
# `make clean` removes it. Programs with host callbacks are never cached (JAX's rule).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache",
                                   "jax"))  # fmt: skip
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

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
