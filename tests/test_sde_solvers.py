"""`sb.NeuralSDE` with Diffrax's whole SDE solver family: the Lévy area that stochastic
Runge-Kutta solvers need, and the solver/adjoint pairs Diffrax cannot run, refused early."""

import diffrax
import jax
import jax.numpy as jnp
import pytest
from helpers import assert_ulp_close

import sciml_bridge as sb


THETA = jnp.array([1.0, 0.5, 0.3])
TS = jnp.linspace(0.0, 1.0, 3)


def _drift(theta, y):
    return theta[0] * (theta[1] - y)


def _additive(theta, y):
    return theta[2] * jnp.ones_like(y)


def _additive_matrix(theta, y):  # (2, 3): three Brownian motions drive two states
    return theta[2] * jnp.outer(jnp.ones_like(y), jnp.arange(1.0, 4.0))


def test_stochastic_runge_kutta_gets_the_levy_area_it_needs_and_matches_diffrax():
    # Diffrax raised `TermAndSolverIncompatible`: the tree was built without a Lévy area.
    key, y0 = jax.random.key(4), jnp.array([0.2, -0.1])
    sde = sb.NeuralSDE(_drift, _additive_matrix, diagonal=False, brownian_shape=(3,),
                       solver=diffrax.ShARK(), dt0=0.1)  # fmt: skip
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=0.05, key=key,
                                     shape=jax.ShapeDtypeStruct((3,), jnp.float64),
                                     levy_area=diffrax.SpaceTimeLevyArea)  # fmt: skip
    terms = diffrax.MultiTerm(diffrax.ODETerm(lambda t, y, a: _drift(THETA, y)),
                              diffrax.ControlTerm(lambda t, y, a: _additive_matrix(THETA, y),
                                                  bm))  # fmt: skip
    want = diffrax.diffeqsolve(terms, diffrax.ShARK(), 0.0, 1.0, 0.1, y0,
                               saveat=diffrax.SaveAt(ts=TS)).ys  # fmt: skip
    assert_ulp_close(sde(THETA, y0, TS, key), want)


@pytest.mark.parametrize("solver", [diffrax.ShARK(), diffrax.StratonovichMilstein()])
def test_two_term_solvers_with_backsolve_are_refused_with_what_works(solver):
    # Diffrax raised its raw `TermAndSolverIncompatible` at the first gradient.
    with pytest.raises(ValueError, match=r"two separate terms.*Heun\(\).*RecursiveCheckpoint"):
        sb.NeuralSDE(_drift, _additive, solver=solver, adjoint=diffrax.BacksolveAdjoint())


def test_ito_solver_with_backsolve_is_refused_at_construction():
    # Diffrax's `NotImplementedError` came only at the first gradient.
    with pytest.raises(ValueError, match=r"Itô solution.*Stratonovich"):
        sb.NeuralSDE(_drift, _additive, adjoint=diffrax.BacksolveAdjoint())


def test_solvers_that_cannot_take_an_sde_are_refused():
    with pytest.raises(ValueError, match=r"SemiImplicitEuler.*MultiTerm\(ODETerm"):
        sb.NeuralSDE(_drift, _additive, solver=diffrax.SemiImplicitEuler())
    with pytest.raises(ValueError, match=r"ALIGN.*UnderdampedLangevin"):
        sb.NeuralSDE(_drift, _additive, solver=diffrax.ALIGN(0.1))
    with pytest.raises(TypeError, match=r"a Diffrax solver instance, but got the class `Heun`"):
        sb.NeuralSDE(_drift, _additive, solver=diffrax.Heun)  # type: ignore[arg-type]
