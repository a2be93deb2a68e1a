"""Which Diffrax solvers and adjoints a neural SDE can use, checked at construction.

`sb.NeuralSDE` hands Diffrax `MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian))`.
A solver declares the terms it takes as `solver.term_structure`; one that cannot take these
two (`diffrax.SemiImplicitEuler`'s pair of terms, the underdamped Langevin solvers
`diffrax.ALIGN` / `ShOULD` / `QUICSORT`) made Diffrax raise its raw
`TermAndSolverIncompatible` at the first call. `diffrax.BacksolveAdjoint` solves backwards
one combined `AdjointTerm`, so a solver that takes the drift and the diffusion as two terms
(`EulerHeun`, the stochastic Runge-Kutta family `ShARK` / `SRA1` / `SEA` / `SPaRK` /
`GeneralShARK` / `SlowRK`, the Milstein solvers) raised it at the first gradient; an Itô
solver raised Diffrax's `NotImplementedError` there (Diffrax's backsolve is Stratonovich
only). Both are refused here, before any tracing, with what works instead.
"""

import typing
from typing import Any

import diffrax


_MSG_TERMS = (
    "`sb.NeuralSDE(..., solver=diffrax.{solver}())`: {solver} solves terms of the structure "
    "{structure}, but a neural SDE is `MultiTerm(ODETerm(drift), ControlTerm(diffusion, "
    "brownian_motion))` (Diffrax raises `TermAndSolverIncompatible`). Fix: an SDE solver such "
    "as `diffrax.Euler()` (Itô), `diffrax.Heun()` (Stratonovich) or `diffrax.ShARK()` "
    "(additive noise); for an underdamped Langevin equation call Diffrax directly with "
    "`diffrax.UnderdampedLangevinDriftTerm` / `UnderdampedLangevinDiffusionTerm`."
)
_MSG_BACKSOLVE = (
    "`sb.NeuralSDE(..., solver=diffrax.{solver}(), adjoint=diffrax.BacksolveAdjoint())` "
    "cannot be solved backwards: {why} Fix: `solver=diffrax.Heun()` (Stratonovich; also "
    "`diffrax.Midpoint()`, `diffrax.ReversibleHeun()`) with `BacksolveAdjoint`, or keep "
    "`{solver}` with the default `adjoint=diffrax.RecursiveCheckpointAdjoint()`."
)
_MSG_SOLVER = (
    "`sb.NeuralSDE(..., solver=...)` expected a Diffrax solver instance, but got {got}. Fix: "
    "e.g. `solver=diffrax.Heun()` (note the call)."
)
_WHY_TWO_TERMS = (
    "Diffrax's `{solver}` takes the drift and the diffusion as two separate terms, and the "
    "backward solve hands it one combined adjoint term (Diffrax raises "
    "`TermAndSolverIncompatible` at the first gradient)."
)
_WHY_ITO = (
    "`{solver}` converges to the Itô solution, and Diffrax's `BacksolveAdjoint` solves only "
    "Stratonovich SDEs backwards (it raises `NotImplementedError` at the first gradient)."
)


def _takes(structure: Any, term: type) -> bool:
    """Whether one slot of a `term_structure` accepts an instance of `term`."""
    cls = typing.get_origin(structure) or structure
    return isinstance(cls, type) and issubclass(term, cls)


def _one_term(structure: Any) -> bool:
    """Whether `structure` is one term of any kind (Euler, Heun, ...), not a pair of them."""
    return typing.get_origin(structure) is None and _takes(structure, diffrax.MultiTerm)


def _takes_sde(structure: Any) -> bool:
    """Whether `structure` accepts `MultiTerm(ODETerm(...), ControlTerm(...))`."""
    if _one_term(structure):
        return True
    if typing.get_origin(structure) is not diffrax.MultiTerm:
        return False  # a tuple of terms (SemiImplicitEuler), ...
    (slots,) = typing.get_args(structure)
    pair = typing.get_args(slots)
    return len(pair) == 2 and _takes(pair[0], diffrax.ODETerm) and _takes(
        pair[1], diffrax.ControlTerm
    )


def check_sde_solver(solver: Any, adjoint: diffrax.AbstractAdjoint) -> None:
    """Refuse a solver that cannot solve a neural SDE, or cannot under `adjoint`."""
    if not isinstance(solver, diffrax.AbstractSolver):
        got = (f"the class `{solver.__name__}`" if isinstance(solver, type) else
               f"{solver!r} ({type(solver).__name__})")  # fmt: skip
        raise TypeError(_MSG_SOLVER.format(got=got))
    name = type(solver).__name__
    structure = solver.term_structure
    if not _takes_sde(structure):
        raise ValueError(_MSG_TERMS.format(solver=name, structure=structure))
    if not isinstance(adjoint, diffrax.BacksolveAdjoint):
        return
    if not _one_term(structure):
        why = _WHY_TWO_TERMS.format(solver=name)
    elif isinstance(solver, diffrax.AbstractItoSolver):
        why = _WHY_ITO.format(solver=name)
    else:
        return
    raise ValueError(_MSG_BACKSOLVE.format(solver=name, why=why))
