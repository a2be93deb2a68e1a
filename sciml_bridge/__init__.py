"""sciml_bridge: hand any nested JAX model to tools that want one flat parameter vector."""

from importlib.metadata import version as _version

from ._collocation import collocation_points as collocation_points
from ._custom_types import (
    Precision as Precision,
    Theta as Theta,
    ThetaBatch as ThetaBatch,
    ThetaLike as ThetaLike,
)
from ._destructure import Restructure as Restructure, destructure as destructure
from ._distributed import distributed_init as distributed_init
from ._flat import AbstractFlatModel as AbstractFlatModel, FlatModel as FlatModel
from ._flat_mlp import FlatMLP as FlatMLP
from ._hard_constraint import HardConstraint as HardConstraint
from ._laplacian import grad_x as grad_x, laplacian as laplacian
from ._least_squares import least_squares as least_squares
from ._make_flat import flat as flat
from ._minimize import minimize as minimize
from ._neural_cde import NeuralCDE as NeuralCDE
from ._neural_ode import NeuralODE as NeuralODE
from ._neural_sde import NeuralSDE as NeuralSDE
from ._pinn import (
    PINN as PINN,
    ErrorReport as ErrorReport,
    Field as Field,
    error_report as error_report,
    pinn as pinn,
)
from ._precision import PrecisionLossWarning as PrecisionLossWarning
from ._result import (
    RESULTS as RESULTS,
    EnsembleSolution as EnsembleSolution,
    NonFiniteLossError as NonFiniteLossError,
    OptimizationError as OptimizationError,
    Solution as Solution,
)
from ._scipy import ScipyObjective as ScipyObjective, scipy_objective as scipy_objective
from ._serialise import load as load, save as save
from ._sharding import shard as shard


__version__ = _version("sciml_bridge")
