"""What every neural differential equation shares: the map of the Diffrax glue.

`sb.NeuralODE`, `sb.NeuralSDE` and `sb.NeuralCDE` are built from three ideas, one module each:

- `_diffeq_inputs.py`: inputs checked before Diffrax sees them (shapes, dtypes, the x64 guard).
- `_diffeq_report.py`: failures of a solve, raised with our remedy (`throw=True`) or turned into
    values that cannot pass for good ones, with NaN derivatives (`throw=False`).
- `_diffeq_adjoint.py`: adjoints that never return a gradient from a failed backward solve, and
    the solver/adjoint pairs whose gradient Diffrax gets wrong, refused; derivatives an
    adjoint cannot take (forward mode through a reverse-mode adjoint, `ts` under
    `BacksolveAdjoint`) named as ours.

SDEs add two of their own, imported by `_neural_sde.py` directly: `_sde_brownian.py` (the
Brownian tree with the Lévy area the solver needs) and `_sde_solver.py` (solvers and
solver/adjoint pairs that cannot run an SDE, refused at construction).

The names are re-exported here for the modules that import them from `_diffeq`.
"""

from ._diffeq_adjoint import (
    backsolve_times as backsolve_times,
    check_reversible_backsolve as check_reversible_backsolve,
    diffeqsolve as diffeqsolve,
    honest_adjoint as honest_adjoint,
)
from ._diffeq_inputs import (
    as_arrays as as_arrays,
    bad_times as bad_times,
    check_dt0 as check_dt0,
    check_inputs as check_inputs,
    check_max_steps as check_max_steps,
    field_shape as field_shape,
    out_of_order as out_of_order,
    placeholder_times as placeholder_times,
    progress_meter as progress_meter,
    shapes as shapes,
)
from ._diffeq_report import (
    all_finite as all_finite,
    not_steady as not_steady,
    report as report,
)
