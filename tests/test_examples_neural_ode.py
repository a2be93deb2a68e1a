"""The neural-ODE examples, end to end in reduced settings (small nets, few steps)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sciml_bridge._cli import load_script


@pytest.fixture(scope="module")
def spiral():
    return load_script("examples/neural_ode/spiral.py")


@pytest.fixture(scope="module")
def lotka_volterra():
    return load_script("examples/neural_ode/lotka_volterra_ude.py")


def test_spiral_data_follow_the_true_dynamics(spiral):
    ts, y0, ys = spiral.spiral_data()
    assert ts.shape == (30,) and float(ts[-1]) == 1.5 and ys.shape == (30, 2)
    assert np.array_equal(ys[0], np.array([2.0, 0.0]))
    # Finite-difference slope at the midpoints against (y**3) A: independent of the solver.
    mid, slope = 0.5 * (ys[1:] + ys[:-1]), np.diff(ys, axis=0) / np.diff(ts)[:, None]
    field = (mid**3) @ np.array(spiral.TRUE_A)
    assert np.max(np.abs(slope - field)) < 0.05 * np.max(np.abs(field))


def test_lotka_volterra_split_into_known_and_missing_terms(lotka_volterra):
    lv = lotka_volterra
    y = jnp.array([[0.5, 4.0], [3.0, 0.2]])
    p = jnp.array([lv.ALPHA, lv.BETA, lv.GAMMA, lv.DELTA])
    full = jnp.stack([lv.lotka_volterra(0.0, yi, p, None) for yi in y])
    known = jnp.stack([lv.ALPHA * y[:, 0], -lv.DELTA * y[:, 1]], axis=1)
    assert np.allclose(known + lv.missing_terms(y), full, rtol=1e-15, atol=1e-15)


# The spiral example's reduced run is checked on the quick demo's own run (tests/test_cli.py).


@pytest.mark.slow
def test_lotka_volterra_example_recovers_the_missing_terms(lotka_volterra, capsys):
    out = lotka_volterra.main(steps=150, bfgs_steps=300, horizons=(14, 28), plot=False,
                              progress=False)  # fmt: skip
    printed = capsys.readouterr().out
    assert f"missing-term relative L2 error {out['error']:.3e}" in printed
    # Reduced run: ~0.1 relative error on the interactions (the full run ~0.035).
    assert out["error"] < 0.2 and out["fit_error"] < 0.02
    assert out["png"] is None


@pytest.mark.slow
def test_ou_sde_example_learns_the_diffusion(tmp_path, capsys):
    ou = load_script("examples/neural_ode/ou_sde.py")
    out = ou.main(paths=64, steps=60, plot=True, out_dir=str(tmp_path), progress=False)
    printed = capsys.readouterr().out
    assert f"learned diffusion {out['sigma']:.4f}" in printed
    # Reduced run (64 paths, 60 steps) from sigma = 0.1: within 10% of the true 0.3 (~2%).
    assert out["error"] < 0.1 and np.isfinite(out["loss"])
    with open(out["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_spiral_cde_example_classifies(capsys):
    cde = load_script("examples/neural_ode/spiral_cde.py")
    out = cde.main(dataset_size=64, width_size=16, steps=30, length=30, progress=False)
    printed = capsys.readouterr().out
    assert f"test accuracy {out['accuracy']:.3f}" in printed
    # Reduced run (64 spirals of 30 points, width 16, 30 full-batch steps); the full one: 1.0.
    assert out["accuracy"] >= 0.95 and np.isfinite(out["loss"])
