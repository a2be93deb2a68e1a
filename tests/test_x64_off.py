"""With x64 off JAX truncates float64 silently (jax#11895); we raise. Run in a fresh process."""

from helpers import run_python


def test_float64_with_x64_off_is_a_clear_type_error():
    code = """
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    import sciml_bridge as sb
    assert not jax.config.read("jax_enable_x64")
    mlp = eqx.nn.MLP(1, 1, 4, 1, key=jax.random.key(0))
    theta, re = sb.destructure(mlp)
    assert theta.dtype == jnp.float32
    assert re(np.asarray(theta, np.float32))(jnp.ones(1)).dtype == jnp.float32
    checks = {
        "dtype=float64": lambda: sb.destructure(mlp, dtype=jnp.float64),
        "numpy theta": lambda: re(np.asarray(theta, np.float64)),
        "numpy leaves": lambda: sb.destructure({"w": np.ones(3)}),
        "flat numpy theta": lambda: sb.flat(mlp, fast=False)(np.zeros(theta.size), jnp.ones(1)),
    }
    for name, check in checks.items():
        try:
            check()
        except TypeError as e:
            msg = str(e)
            assert 'jax.config.update("jax_enable_x64", True)' in msg, (name, msg)
            assert "silently" in msg and "float64" in msg, (name, msg)
        else:
            raise AssertionError(f"{name}: no TypeError")
    print("ok")
    """
    proc = run_python(code, env={"JAX_ENABLE_X64": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
