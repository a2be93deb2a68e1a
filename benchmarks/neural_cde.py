"""Does `sb.NeuralCDE` + `sb.minimize` classify spirals as well and as fast as Diffrax's example?

Question: test accuracy and time per training step on Diffrax's neural CDE spiral
classification (256 spirals, 100 times, time as a channel, Hermite cubic with backward
differences; hidden 8, MLP width 128 depth 1, Tsit5, PID rtol 1e-3 atol 1e-6; Adam lr 1e-2) for

- (a) the Diffrax original, written as in Diffrax's docs: an `eqx.Module` model,
  `eqx.filter_value_and_grad` + `optax` in a Python loop over minibatches of 32
  (here wrapped in `eqx.filter_jit`, one dispatch per step);
- (b) `examples/neural_ode/spiral_cde.py`: the same networks as one flat `theta`,
  `sb.NeuralCDE` and `sb.minimize(..., "adam", batch_size=32)` (minibatches drawn inside the
  compiled loop), with `sb.NeuralCDE`'s default: it steps onto every knot of the interpolation;
- (c) the same with the original's steps: the `PIDController` wrapped in
  `diffrax.ClipStepSizeController`, which `sb.NeuralCDE` leaves alone.

Same data, same initial weights (the example builds its networks with the same keys), same step
count. Writes `benchmarks/results/neural_cde.md`.
"""

import os
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from sciml_bridge._cli import load_script

from _timing import write_result


jax.config.update("jax_enable_x64", True)



class Func(eqx.Module):
    mlp: eqx.nn.MLP
    shape: tuple[int, int] = eqx.field(static=True)

    def __call__(self, t, y, args):
        return self.mlp(y).reshape(self.shape)


class DiffraxCDE(eqx.Module):
    """Diffrax's documented `NeuralCDE`: initial MLP, CDE, linear readout and sigmoid."""

    initial: eqx.nn.MLP
    func: Func
    linear: eqx.nn.Linear

    def __call__(self, ts, coeffs):
        control = diffrax.CubicInterpolation(ts, coeffs)
        term = diffrax.ControlTerm(self.func, control).to_ode()
        y0 = self.initial(control.evaluate(ts[0]))
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), ts[0], ts[-1], None, y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            saveat=diffrax.SaveAt(t1=True),
        )  # fmt: skip
        return jax.nn.sigmoid(self.linear(sol.ys[-1]))[0]


CONTROLLERS = {
    # `sb.NeuralCDE` gives a plain `PIDController` `jump_ts=ts` (it steps onto every knot);
    # wrapped in `ClipStepSizeController` it is left alone: the Diffrax original's steps.
    "(b) sb.NeuralCDE + sb.minimize (steps onto the knots: the default)":
        diffrax.PIDController(rtol=1e-3, atol=1e-6),
    "(c) the same, the original's steps (`ClipStepSizeController(pid)`)":
        diffrax.ClipStepSizeController(diffrax.PIDController(rtol=1e-3, atol=1e-6)),
}


def diffrax_model(example, width: int, key) -> DiffraxCDE:
    """The example's networks, as Equinox modules (same keys, so the same weights)."""
    clf = example.Classifier(width_size=width, key=key)
    func = Func(clf.func.restructure(clf.func.theta0).mlp, (8, 3))
    return DiffraxCDE(clf.initial.restructure(clf.initial.theta0), func,
                      clf.readout.restructure(clf.readout.theta0))


def dataloader(arrays, batch_size: int, *, key):
    """Diffrax's example loader: a new permutation per epoch, full batches only."""
    n = arrays[0].shape[0]
    while True:
        key, sub = jax.random.split(key)
        perm = jax.random.permutation(sub, n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield tuple(a[perm[start : start + batch_size]] for a in arrays)


def train_diffrax(model, ts, coeffs, labels, *, steps, lr, batch_size, key):
    def loss(model, label_i, coeff_i):
        pred = jax.vmap(model, in_axes=(None, 0))(ts, coeff_i)
        return -jnp.mean(label_i * jnp.log(pred) + (1 - label_i) * jnp.log(1 - pred))

    optim = optax.adam(lr)

    @eqx.filter_jit
    def make_step(model, opt_state, label_i, coeff_i):
        value, grads = eqx.filter_value_and_grad(loss)(model, label_i, coeff_i)
        updates, opt_state = optim.update(grads, opt_state)
        return value, eqx.apply_updates(model, updates), opt_state

    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    times, value = [], None
    for _, (label_i, *coeff_i) in zip(range(steps),
                                      dataloader((labels, *coeffs), batch_size, key=key)):
        start = time.perf_counter()
        value, model, opt_state = make_step(model, opt_state, label_i, tuple(coeff_i))
        jax.block_until_ready(value)
        times.append(time.perf_counter() - start)
    return model, float(value), times


def main(steps: int = 60, width: int = 128, dataset_size: int = 256, batch_size: int = 32):
    example = load_script("examples/neural_ode/spiral_cde.py", command="bench")
    train_key, test_key, model_key, loader_key = jax.random.split(jax.random.key(5678), 4)
    ts, coeffs, labels, x0 = example.get_data(dataset_size, key=train_key)
    test = example.get_data(dataset_size, key=test_key)

    model, loss_a, times = train_diffrax(diffrax_model(example, width, model_key), ts, coeffs,
                                         labels, steps=steps, lr=1e-2, batch_size=batch_size,
                                         key=loader_key)  # fmt: skip
    pred = jax.vmap(model, in_axes=(None, 0))(test[0], test[1])
    acc_a = float(jnp.mean((pred > 0.5) == (test[2] == 1)))
    per_step_a = sorted(times[1:])[len(times[1:]) // 2]

    rows = {}
    for label, controller in CONTROLLERS.items():
        clf = example.Classifier(width_size=width, key=model_key, stepsize_controller=controller)
        loss = example.make_loss(clf, ts)  # one loss object: the second call reuses the compile
        run = lambda: example.train(loss, clf.theta0, coeffs, labels, x0, steps=steps, lr=1e-2,
                                    batch_size=batch_size, key=loader_key, progress=False)
        run()
        start = time.perf_counter()
        res, batch = run()
        per_step = (time.perf_counter() - start) / res.steps
        rows[label] = (batch, res.loss, clf.accuracy(res.theta, *test[:3], test[3]), per_step)
    text = "\n".join([
        f"Neural CDE spiral classification ({dataset_size} spirals, width {width}, {steps} Adam "
        f"steps, float64, {jax.devices()[0].device_kind}, 2 cores; load average "
        f"{os.getloadavg()[0]:.2f} when written).",
        "",
        "| contender | batch | final train loss | test accuracy | ms / step (after compile) |",
        "|---|---:|---:|---:|---:|",
        f"| (a) Diffrax original (filter_jit step, Python loop) | {batch_size} | {loss_a:.3f} | "
        f"{acc_a:.3f} | {1e3 * per_step_a:.1f} |",
        *(f"| {label} | {b} | {loss:.3f} | {acc:.3f} | {1e3 * t:.1f} |"
          for label, (b, loss, acc, t) in rows.items()),
    ])  # fmt: skip
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
