"""`FlatMLP`: an MLP that is nothing but a flat vector and static offsets (SimpleChains' idea).

Every weight is a static slice of `theta`; no pytree is rebuilt and nothing walks a tree per
call. The layout is the one `sb.destructure` gives for the equivalent `eqx.nn.MLP`, so the fast
and general paths share every number. Knowing the network also gives input derivatives in one
forward pass: `(value, Jacobian, Laplacian)` propagate layer by layer (Li et al. 2023).

Measured (shared/PITFALLS.md, "Dispatch cost"): inside `jax.jit` the general path's rebuild
already costs nothing at run time, so this path wins on dispatch and compile time, and on what
knowing the network makes possible (the forward Laplacian), not on the steady-state kernel.
"""

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._activations import Activation, make_activation
from ._custom_types import DTypeLike, KeyLike, Size, Theta, ThetaLike
from ._destructure import Restructure, check_theta, destructure
from ._fast import Layer, Param, recognise
from ._flat import AbstractFlatModel
from ._flat_mlp_build import check_dtype, check_key, check_sizes, equivalent_model
from ._precision import (
    cast_leaf,
    check_jax_dtype,
    complex_dtype,
    guard_x64,
    is_complex,
    is_inexact,
    promote,
)


_MSG_X = """\
`fm(theta, x)` (an `sb.FlatMLP` with input size {size!r}) expected one point `x` of shape
{want}, but got shape {got}. Like `eqx.nn.MLP`, it takes unbatched inputs.
Fix: batch with `jax.vmap(fm, in_axes=(None, 0))(theta, xs)`."""


class FlatMLP(AbstractFlatModel):
    """A multi-layer perceptron whose only parameters are one flat vector.

    Weights are static-offset slices of `theta`: no pytree is rebuilt, no `eqx.combine`, no
    per-call Python work. `theta0` is exactly `sb.destructure` of the equivalent `eqx.nn.MLP`
    made with the same key (an `eqx.nn.Sequential` of `Linear`/`Lambda` for uneven widths, and
    for one layer with a `final_activation`, which `eqx.nn.MLP` ignores at depth 0),
    and `fm.restructure(theta)` rebuilds that Equinox network. Inputs follow `eqx.nn.MLP`:
    one unbatched point; `jax.vmap` over points runs every layer as one matrix product.

    !!! example

        ```python
        import jax, jax.numpy as jnp, equinox as eqx
        import sciml_bridge as sb

        key = jax.random.key(0)
        fm = sb.FlatMLP((2, 16, 16, 1), activation="tanh", key=key)
        mlp = eqx.nn.MLP(2, 1, 16, 2, activation=jnp.tanh, key=key)
        assert (fm.theta0 == sb.destructure(mlp)[0]).all()
        xs = jnp.ones((128, 2))
        ys = jax.vmap(fm, in_axes=(None, 0))(fm.theta0, xs)  # (128, 1)
        ```

    Computation follows `theta`'s dtype (`precision="vector"`): a float64 `theta` gives float64
    output. A wider `x` (float64 into float32 weights, or complex) widens the computation
    instead of being truncated.

    **Arguments:**

    - `sizes`: `(in, hidden..., out)`; `"scalar"` is allowed first or last, as in
        `eqx.nn.MLP` (input of shape `()` / output of shape `()`).
    - `activation`: after every hidden layer. A name (`"tanh"`, `"sin"`, `"cos"`,
        `"softplus"`, `"sigmoid"`, `"silu"`, `"gelu"`, `"relu"`, `"identity"`), a callable
        acting on each entry, or `(f, df, d2f)` with its first and second derivatives (used by
        `sb.laplacian` and `sb.grad_x`; without them a callable's derivatives come from nested
        forward-mode AD). Default `"tanh"`. `sb.laplacian`, `u.hessian` and
        `u.second_derivative` refuse activations whose first derivative jumps (relu,
        leaky_relu, relu6, hard_tanh, selu, abs, ...: autodiff reports their second
        derivative as 0); `sb.grad_x` takes them.
    - `final_activation`: after the last layer, same forms; `None` (default) is the identity.
    - `key`: PRNG key, used exactly as `eqx.nn.MLP` uses it.
    - `dtype`: parameter dtype; default float32, or float64 with x64 on.
    - `use_bias`: biases on every layer. Default `True`.

    **Raises:**

    `ValueError` for `sizes` with fewer than two entries or one below 1, an unknown activation
    name or a batch of keys; `TypeError` for a size that is not an int (`2.0`, `True`, or
    `"scalar"` inside), an activation that is neither a name, a callable nor a tuple of callables,
    a `key` that is not a PRNG key, a non-floating `dtype` or one JAX cannot hold (NumPy's
    float128), or `dtype=jnp.float64` while JAX's x64 mode is off.
    """

    theta0: Theta
    restructure: Restructure
    layers: tuple[Layer, ...] = eqx.field(static=True)
    activations: tuple[Activation | None, ...] = eqx.field(static=True)
    in_size: Size = eqx.field(static=True)
    out_size: Size = eqx.field(static=True)
    is_fast: ClassVar[bool] = True

    def __init__(
        self,
        sizes: Sequence[Size],
        activation: Any = "tanh",
        final_activation: Any = None,
        *,
        key: KeyLike,
        dtype: DTypeLike | None = None,
        use_bias: bool = True,
    ):
        sizes = check_sizes(sizes)
        check_key(key)
        check_dtype(dtype)
        hidden, final = make_activation(activation), make_activation(final_activation)
        model = equivalent_model(sizes, hidden, final, key, dtype, use_bias)
        self.theta0, self.restructure = destructure(model)
        self.layers = recognise(model, self.restructure).layers
        self.activations = (hidden,) * (len(self.layers) - 1) + (final,)
        self.in_size, self.out_size = sizes[0], sizes[-1]

    @classmethod
    def from_layout(cls, theta0: Theta, restructure: Restructure, layers: tuple[Layer, ...],
                    activations: tuple[Activation | None, ...], in_size, out_size) -> "FlatMLP":
        """Wrap an existing layout (used by `sb.flat(model, fast=...)`); no new numbers."""
        # `__init__` builds a network from sizes; this is the route Equinox's own unflatten
        # takes to set fields directly (`object.__new__` then `object.__setattr__`).
        self = object.__new__(cls)
        fields = dict(theta0=theta0, restructure=restructure, layers=layers,
                      activations=activations, in_size=in_size, out_size=out_size)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self

    def __hash__(self) -> int:
        # `jax.jit(fm)` needs a hash; theta0 is data, not identity (as for `sb.FlatModel`).
        return hash((self.restructure, self.layers, self.activations, self.in_size,
                     self.out_size, self.theta0.shape, str(self.theta0.dtype)))

    def __call__(self, theta: ThetaLike, x: ArrayLike, *, key: Any = None) -> Array:
        """`y = fm(theta, x)`: the network at one point `x` with parameters `theta`.

        `key` is accepted and ignored, as `eqx.nn.MLP` accepts and ignores it."""
        params, h = self._inputs(self._params(theta), x)
        for (w, b), activation in zip(params, self.activations):
            h = _to(h, w.dtype)
            h = w @ h if b is None else w @ h + b
            if activation is not None:
                h = activation(h)
        return h[0] if self.out_size == "scalar" else h

    def forward_derivatives(self, theta: ThetaLike, x: ArrayLike,
                            order: int = 2) -> tuple[Array, ...]:
        """`(y, dy/dx, Laplacian)` (or `(y, dy/dx)` for `order=1`) in one forward pass.

        Each layer maps `(h, J, L)` (value, Jacobian and Laplacian w.r.t. `x`) as
        `z = W h + b, Jz = W J, Lz = W L`, then through `f`:
        `(f(z), f'(z) Jz, f'(z) Lz + f''(z) sum_k Jz[:, k]^2)`.
        Shapes follow `jax.jacfwd`: the Jacobian is `y.shape + x.shape`.
        """
        if order not in (1, 2):
            raise ValueError(f"`fm.forward_derivatives(theta, x, order)` expected order 1 or 2, "
                             f"got {order!r}.")
        params, h = self._inputs(self._params(theta), x)
        # Row layout (`h @ W.T`, `J.T` of shape (d, n)): under `jax.vmap` the batch stays the
        # leading axis, so each product is one plain matmul with no transposes (measured up to
        # 1.6x faster than `W @ J` at d = 2..8, equal at d = 32).
        jac_t = lap = None
        for (w, b), activation in zip(params, self.activations):
            h, jac_t, lap = (_to(a, w.dtype) for a in (h, jac_t, lap))
            h = h @ w.T if b is None else h @ w.T + b
            # The first layer's Jacobian is W itself: never multiply by an identity.
            jac_t = w.T if jac_t is None else jac_t @ w.T
            lap = None if lap is None else lap @ w.T
            if activation is not None:
                h, jac_t, lap = _through(activation, h, jac_t, lap, order)
        lap = jnp.zeros_like(h) if lap is None else lap
        return self._shape_out(h, cast(Array, jac_t).T, lap)[: order + 1]

    def _params(self, theta: ThetaLike) -> list[tuple[Array, Array | None]]:
        """Every `(W, b)` as a static slice of `theta` (checked once, at trace time)."""
        theta = check_theta(theta, self.size, "fm(theta, x)")
        return [(self._read(theta, layer.weight),
                 None if layer.bias is None else self._read(theta, layer.bias))
                for layer in self.layers]

    def _read(self, theta: Theta, param: Param) -> Array:
        chunk = theta[param.start : param.start + param.size].reshape(param.shape)
        # Same dtype rules as `re(theta)`, so both paths agree under every `precision`.
        re = self.restructure
        return cast_leaf(chunk, param.stored, param.path, re.precision, re._warned,
                         "fm(theta, x)")

    def _inputs(self, params: list, x: ArrayLike) -> tuple[list, Array]:
        """`x` (flattened) in the wider of its and the first weights' dtypes, and each layer's
        weights in the dtype `eqx.nn.Linear` computes that layer in (see `widen_layers`).

        Upcasting float32 weights for a float64 (or complex) `x` is lossless; truncating the
        input to the weights' dtype would silently lose precision, so we never do that."""
        if not isinstance(x, jax.Array | int | float | complex):  # Python scalars stay weak
            guard_x64(x, "`fm(theta, x)`", "a NumPy `x`")
            x = np.asarray(x)
            check_jax_dtype(x.dtype, "`fm(theta, x)`", "a NumPy `x`")
        x = jnp.asarray(x)
        want = () if self.in_size == "scalar" else (self.in_size,)
        if x.shape != want:
            raise ValueError(_MSG_X.format(size=self.in_size, want=want, got=x.shape))
        w_dtype = np.dtype(params[0][0].dtype)
        if not is_inexact(x.dtype):
            dtype = w_dtype
        elif x.weak_type:
            # A Python float (weakly typed) follows the weights, as in `eqx.nn.MLP`'s matmul;
            # a Python complex makes the computation complex at the weights' precision.
            dtype = complex_dtype(w_dtype) if is_complex(x.dtype) else w_dtype
        else:
            dtype = promote([w_dtype, x.dtype])
        return widen_layers(params, dtype), x.astype(dtype).reshape(-1)

    def _shape_out(self, h: Array, jac: Array, lap: Array) -> tuple[Array, Array, Array]:
        if self.in_size == "scalar":
            jac = jac[:, 0]
        if self.out_size == "scalar":
            return h[0], jac[0], lap[0]
        return h, jac, lap


def _to(a: Array | None, dtype) -> Array | None:
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def widen_layers(params: list, dtype) -> list[tuple[Array, Array | None]]:
    """Each `(W, b)` in the promotion of its own dtypes and the incoming activations' dtype
    (`dtype` for the first layer), as `W @ h + b` promotes in the nested `eqx.nn.Linear`.

    Layers may differ in dtype (`precision="model"` keeps each stored dtype): casting every
    layer to the first one's computation dtype would round a wider later layer. A consumer
    casts each layer's incoming `h` (and its derivatives) to that layer's dtype."""
    out = []
    for w, b in params:
        dtype = promote([dtype, w.dtype] + ([] if b is None else [b.dtype]))
        out.append((_to(w, dtype), _to(b, dtype)))
    return out


def _through(activation: Activation, z: Array, jac_t: Array, lap: Array | None, order: int):
    """Push `(value, transposed Jacobian (d, n), Laplacian)` through an elementwise activation."""
    if order == 1:
        f, df = activation.derivatives(z, 1)
        return f, jac_t * df, None
    f, df, d2f = activation.derivatives(z, 2)
    curvature = d2f * jnp.sum(jac_t * jac_t, axis=0)
    return f, jac_t * df, curvature if lap is None else df * lap + curvature
