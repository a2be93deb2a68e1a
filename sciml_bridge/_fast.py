"""The fast-path recogniser: networks that `sb.FlatMLP` can run from slices of `theta`.

Recognised: `eqx.nn.MLP` (also `scan=True`) with parameter-free activations, and
`eqx.nn.Sequential` of `eqx.nn.Linear` layers, each optionally followed by one
`eqx.nn.Lambda` of a known elementwise activation (`jnp.tanh`, `jax.nn.softplus`, ...).
The layout is read off `re` (the slots `sb.destructure` made), never recomputed, so the fast
path uses exactly the same `theta` and `fm.restructure` still rebuilds the original model.
"""

from typing import Any, NamedTuple

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from ._activations import Activation, known_activation, make_activation
from ._destructure import Restructure


class Param(NamedTuple):
    """One weight or bias: where it sits in theta and the leaf it rebuilds."""

    start: int
    shape: tuple[int, ...]
    stored: np.dtype
    path: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class Layer(NamedTuple):
    """An affine map `W @ h + b` read from theta."""

    weight: Param
    bias: Param | None


class Unsupported(Exception):
    """Why a model is not one `FlatMLP` can run (the `reason` goes into the error)."""


class Recognised(NamedTuple):
    layers: tuple[Layer, ...]
    activations: tuple[Activation | None, ...]
    in_size: Any
    out_size: Any


# A Linear as it appears in the model; `layer` picks one layer of a `scan=True` stack.
class _LinearRef(NamedTuple):
    linear: eqx.nn.Linear
    layer: int | None  # not `index`: that would shadow `tuple.index`
    where: str


def _slot_params(model: Any, re: Restructure) -> dict[int, Param]:
    """`id(leaf) -> Param` for every array leaf that is a slot of `theta` (ties included).

    Under `ties="none"` one array in two places has two slots; it maps to the first, and
    `recognise` then finds `theta` entries no layer reads and refuses (the general path runs).
    """
    by_path = {path: Param(start, shape, dtype, path) for path, start, shape, dtype
               in zip(re.paths, re.offsets, re.shapes, re.dtypes)}
    out: dict[int, Param] = {}
    leaves = jtu.tree_flatten_with_path(model, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex))
    for path, leaf in leaves[0]:
        # A tied array has its slot under its first path; later places resolve by identity.
        if eqx.is_array(leaf) and id(leaf) not in out and jtu.keystr(path) in by_path:
            out[id(leaf)] = by_path[jtu.keystr(path)]
    return out


def _param(slots: dict[int, Param], leaf: Any, ref: _LinearRef, name: str, shape) -> Param:
    param = slots.get(id(leaf))
    if param is None:
        raise Unsupported(f"the {name} of {ref.where} is not in `theta` (frozen by `params=` "
                          "or not a floating array)")
    if ref.layer is not None:
        size = param.size // param.shape[0]
        param = Param(param.start + ref.layer * size, param.shape[1:], param.stored, param.path)
    if param.shape != shape:
        raise Unsupported(f"the {name} of {ref.where} has shape {param.shape}, expected {shape}")
    return param


def _layer(slots: dict[int, Param], ref: _LinearRef) -> Layer:
    lin = ref.linear
    n_in = 1 if lin.in_features == "scalar" else lin.in_features
    n_out = 1 if lin.out_features == "scalar" else lin.out_features
    weight = _param(slots, lin.weight, ref, "weight", (n_out, n_in))
    bias = None if lin.bias is None else _param(slots, lin.bias, ref, "bias", (n_out,))
    return Layer(weight, bias)


def _pure_activation(fn: Any, where: str) -> Activation | None:
    if any(eqx.is_array(leaf) for leaf in jtu.tree_leaves(fn)):
        raise Unsupported(f"{where} holds arrays (a learnable activation)")
    return make_activation(fn)


def _mlp_parts(mlp: eqx.nn.MLP):
    if mlp.scan and mlp.depth > 0:
        first, stack, last = mlp.layers
        refs = [_LinearRef(first, None, "`layers[0]`")]
        refs += [_LinearRef(stack, j, f"`layers[1]` (stacked layer {j})")
                 for j in range(mlp.depth - 1)]
        refs.append(_LinearRef(last, None, "`layers[2]`"))
    else:
        refs = [_LinearRef(lin, None, f"`layers[{i}]`") for i, lin in enumerate(mlp.layers)]
    if mlp.depth == 0:
        # `eqx.nn.MLP.__call__` at depth 0 is `layers[0](x)`: both activations are ignored.
        return refs, (None,), mlp.in_size, mlp.out_size
    hidden = _pure_activation(mlp.activation, "`activation`")
    final = _pure_activation(mlp.final_activation, "`final_activation`")
    activations = (hidden,) * (len(refs) - 1) + (final,)
    return refs, activations, mlp.in_size, mlp.out_size


def _sequential_parts(seq: eqx.nn.Sequential):
    refs: list[_LinearRef] = []
    activations: list[Activation | None] = []
    for i, module in enumerate(seq.layers):
        if type(module) is eqx.nn.Linear:
            refs.append(_LinearRef(module, None, f"`layers[{i}]`"))
            activations.append(None)
        elif type(module) is eqx.nn.Lambda and refs and activations[-1] is None:
            # An `Activation` is what `sb.FlatMLP` itself puts in a `Lambda` (elementwise).
            fn = module.fn
            known = fn if isinstance(fn, Activation) else known_activation(fn)
            if known is None:
                raise Unsupported(f"`layers[{i}]` is a `Lambda` of {module.fn!r}, not a known "
                                  "elementwise activation")
            activations[-1] = make_activation(known)
        else:
            raise Unsupported(f"`layers[{i}]` is a `{type(module).__name__}` where a `Linear` "
                              "(or one activation `Lambda` after a `Linear`) was expected")
    if not refs:
        raise Unsupported("it has no `Linear` layer")
    chain = [r.linear for r in refs]
    if any(a.out_features != b.in_features or a.out_features == "scalar"
           for a, b in zip(chain, chain[1:])):
        raise Unsupported("consecutive `Linear` sizes do not chain")
    return refs, tuple(activations), chain[0].in_features, chain[-1].out_features


def recognise(model: Any, re: Restructure) -> Recognised:
    """The FlatMLP layout of `model` with `re`'s slots, or raise `Unsupported` saying why."""
    if type(model) is eqx.nn.MLP:
        refs, activations, in_size, out_size = _mlp_parts(model)
    elif type(model) is eqx.nn.Sequential:
        refs, activations, in_size, out_size = _sequential_parts(model)
    else:
        raise Unsupported("only `eqx.nn.MLP` and `eqx.nn.Sequential` are recognised")
    slots = _slot_params(model, re)
    layers = tuple(_layer(slots, ref) for ref in refs)
    used = {(p.start, p.size) for layer in layers for p in layer if p is not None}
    if sum(size for _, size in used) != re.size:
        raise Unsupported("`theta` holds parameters outside the `Linear` layers")
    return Recognised(layers, activations, in_size, out_size)
