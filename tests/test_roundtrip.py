"""Property: `re(destructure(tree)[0])` reproduces random nested trees exactly."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import tree_allclose
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import sciml_bridge as sb


def _leaf(precision: int):
    real = np.float64 if precision == 64 else np.float32
    cplx = np.complex128 if precision == 64 else np.complex64
    shapes = hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)
    floats = hnp.arrays(real, shapes, elements=st.floats(-1e3, 1e3, width=precision))
    complexes = hnp.arrays(cplx, shapes, elements=st.complex_numbers(
        max_magnitude=1e3, allow_nan=False, allow_infinity=False, width=2 * precision))
    ints = hnp.arrays(np.int32, shapes, elements=st.integers(-5, 5))
    return st.one_of(
        floats.map(jnp.asarray), complexes.map(jnp.asarray), ints.map(jnp.asarray), floats,
        st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans(),
    )


def _trees(precision: int):
    return st.recursive(
        _leaf(precision),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.tuples(children, children),
            st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
        ),
        max_leaves=8,
    )


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([32, 64]).flatmap(_trees))
def test_roundtrip_reproduces_values_dtypes_structure_and_non_parameters(tree):
    theta, re = sb.destructure(tree)
    rebuilt = re(theta)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(tree)):
        if isinstance(b, (jax.Array, np.ndarray)) and np.dtype(b.dtype).kind in "fc":
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            assert a is b
    assert tree_allclose(rebuilt, tree, rtol=0, atol=0)
