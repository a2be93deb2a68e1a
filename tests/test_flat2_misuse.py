"""`sb.flat` given what cannot be meant: each was taken as a model with no (or the wrong)
parameters, and failed only when called, inside Flax or Equinox, or trained nothing."""

import equinox as eqx
import jax
import pytest

import sciml_bridge as sb


nn = pytest.importorskip("flax.linen")


def test_a_flat_model_a_class_or_a_bare_function_is_refused():
    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    for fm, kind in ((sb.flat(mlp), "FlatMLP"), (sb.flat(mlp, fast=False), "FlatModel")):
        with pytest.raises(TypeError, match=rf"^`sb.flat\(fm\)` got a model that is already "
                           rf"flat \(an `sb.{kind}`\)"):  # fmt: skip
            sb.flat(fm)
    with pytest.raises(TypeError, match=r"^`sb.flat\(model\)` got the class `MLP`, not a model"):
        sb.flat(eqx.nn.MLP)
    # Flax's `apply` without `variables`: Flax failed inside ("Array.__contains__").
    with pytest.raises(TypeError, match=r"^`sb.flat\(f\)` got a function with no parameters "
                       r"\(`Module.apply`\) and no `variables`"):  # fmt: skip
        sb.flat(nn.Dense(2).apply)
    # A bound method is one leaf: theta was empty, and training changed nothing.
    with pytest.raises(TypeError, match=r"^`sb.flat\(model.method\)` got the bound method "
                       r"`MLP.__call__`"):  # fmt: skip
        sb.flat(mlp.__call__)
