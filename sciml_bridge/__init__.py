"""sciml_bridge: hand any nested JAX model to tools that want one flat parameter vector."""

from ._collocation import collocation_points as collocation_points
from ._destructure import Restructure as Restructure, destructure as destructure
from ._flat import AbstractFlatModel as AbstractFlatModel, FlatModel as FlatModel, flat as flat
from ._flat_mlp import FlatMLP as FlatMLP
from ._laplacian import grad_x as grad_x, laplacian as laplacian
from ._neural_ode import NeuralODE as NeuralODE
from ._precision import PrecisionLossWarning as PrecisionLossWarning


__version__ = "0.1.0"
