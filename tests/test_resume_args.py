"""A checkpoint records the structure, shapes and dtypes of `args`: resuming on data of
another shape is an error naming it (the optimiser state was built on the old data), while a
checkpoint written before `args` were recorded still resumes. Values are not recorded
(hashing them would read all the data, from every process, at every start)."""

import jax.numpy as jnp
import pytest

import sciml_bridge as sb
from sciml_bridge._solvers._checkpoint import _check_fingerprint, describe_args, fingerprint


X = jnp.linspace(0.0, 1.0, 8)


def test_args_are_described_by_structure_shape_and_dtype_not_values():
    x, y = jnp.zeros((64, 1)), jnp.ones(64, jnp.float32)
    assert describe_args((x, {"y": y})) == "[0]: float64[64,1], [1]['y']: float32[64]"
    assert describe_args((x + 1.0, {"y": y * 2})) == describe_args((x, {"y": y}))
    assert describe_args(()) == "()"
    fp = lambda args: fingerprint("adam", {}, None, args)
    assert fp((x,)) != fp((jnp.zeros((32, 1)),)) and fp((x,)) != fp((x, x))


def test_args_of_another_shape_are_an_error_naming_them():
    saved, now = fingerprint("adam", {}, None, (X,)), fingerprint("adam", {}, None, (X[:4],))
    with pytest.raises(ValueError, match=r"(?s)with\n`args` of other shapes.*\n  args: \[0\]: "
                                         r"float64\[8\] in the checkpoint, \[0\]: float64\[4\] "
                                         r"now.*`resume=\"force\"`"):  # fmt: skip
        _check_fingerprint(saved, now, "sb.minimize", "c.npz")
    _check_fingerprint(saved, fingerprint("adam", {}, None, (2 * X,)), "sb.minimize", "c.npz")


def test_a_checkpoint_that_records_no_args_still_resumes():
    now = fingerprint("adam", {}, None, (X,))
    _check_fingerprint({k: v for k, v in now.items() if k != "args"}, now, "sb.minimize", "c")


def test_sb_minimize_resuming_on_data_of_another_shape_names_it(tmp_path):
    path = str(tmp_path / "run.npz")
    loss = lambda theta, x: jnp.sum((theta[0] * x - 1.0) ** 2)
    run = lambda x, **kw: sb.minimize(loss, jnp.zeros(1), "adam", args=(x,), max_steps=4,
                                      checkpoint=path, progress=False, **kw)  # fmt: skip
    first = run(X)
    with pytest.raises(ValueError, match=r"args: \[0\]: float64\[8\] in the checkpoint, "
                                         r"\[0\]: float64\[16\] now"):  # fmt: skip
        run(jnp.linspace(0.0, 1.0, 16))
    assert run(2 * X).steps == first.steps  # same shapes: resumes (values are not recorded)
