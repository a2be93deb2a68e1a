"""Does `sb.NeuralODE` cost anything over the Equinox-module style of the Diffrax example?

Question: time per loss+gradient step on the spiral problem (2 -> 50 -> 2 tanh on y**3, Tsit5,
PID rtol=atol=1e-6, 30 times on [0, 1.5]) for

- (a) the Diffrax example's style: an `eqx.Module` vector field closed into the `ODETerm`,
  `eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)`; and (a') the same model partitioned
  once so the step is a `jax.jit` over arrays (the dispatch-free baseline, PITFALLS "Dispatch");
- (b) `sb.NeuralODE` with `theta` one flat vector under `jax.jit`: the fast path (`sb.flat` of
  the MLP picks `FlatMLP`) and the general path (`fast=False`, rebuilt once per solve);

for `RecursiveCheckpointAdjoint` and `BacksolveAdjoint`. Same weights for every contender.
Then the full spiral fit of `examples/neural_ode/spiral.py`: Adam 500 steps (timed again after
compilation) and BFGS to the end. Last, Diffrax's own neural-ODE example as written in its docs
(256 oscillators, minibatches of 32, AdaBelief 3e-3, 500 steps on the first 10% of each series,
then 500 on all of it; an `eqx.filter_jit` step in a Python loop) next to `sb.NeuralODE` +
`sb.minimize(..., batch_size=32, key=key)` (minibatches drawn inside the compiled loop) on the
fast and the general path: final loss and time per step. Writes its tables to
`benchmarks/results/neural_ode.md`.
"""

import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import sciml_bridge as sb
from sciml_bridge._cli import load_script

from _timing import per_call, write_result


jax.config.update("jax_enable_x64", True)

ADJOINTS = {
    "recursive checkpoint": diffrax.RecursiveCheckpointAdjoint(),
    "backsolve": diffrax.BacksolveAdjoint(),
}
CONTROLLER = diffrax.PIDController(rtol=1e-6, atol=1e-6)


class Func(eqx.Module):
    """The Diffrax example's vector field: the network is part of the term."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y**3)


def diffrax_style_loss(adjoint, ts, y0, data):
    def loss(func):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(func), diffrax.Tsit5(), ts[0], ts[-1], None, y0,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=CONTROLLER, adjoint=adjoint,
            max_steps=4096,
        )  # fmt: skip
        return jnp.mean((sol.ys - data) ** 2)

    return loss


def cubed(model, y):
    """`sb.flat(cubed, mlp)`: the general path, whose `apply` feeds y**3 to the rebuilt MLP."""
    return model(y**3)


def bridge_loss(fm, adjoint, ts, y0, data):
    # A general FlatModel is the vector field itself, so NeuralODE rebuilds it once per solve.
    field = fm if isinstance(fm, sb.FlatModel) else (lambda theta, y: fm(theta, y**3))
    node = sb.NeuralODE(field, adjoint=adjoint)
    return lambda theta: jnp.mean((node(theta, y0, ts) - data) ** 2)


def median_seconds(contenders: dict, repeats: int) -> dict:
    """Median seconds per call of each `(step, arg)`, after a warm-up (compilation) call.

    Round-robin over the contenders, one call each per round, so that a shared machine's
    load drifts over all of them alike.
    """
    for step, arg in contenders.values():
        jax.block_until_ready(step(arg))
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (step, arg) in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(step(arg))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_contenders(adjoint, mlp, ts, y0, data):
    """`{name: (step, argument)}`, every one computing the same loss and gradient."""
    func = Func(mlp)
    a_loss = diffrax_style_loss(adjoint, ts, y0, data)
    params, static = eqx.partition(func, eqx.is_inexact_array)
    a_jit = jax.jit(jax.value_and_grad(lambda p: a_loss(eqx.combine(p, static))))
    fast, general = sb.flat(mlp), sb.flat(cubed, mlp)
    return {
        "(a) Diffrax example: eqx.filter_jit": (
            eqx.filter_jit(eqx.filter_value_and_grad(a_loss)), func),
        "(a') Diffrax example: jax.jit over arrays": (a_jit, params),
        "(b) sb.NeuralODE, FlatMLP fast path": (
            jax.jit(jax.value_and_grad(bridge_loss(fast, adjoint, ts, y0, data))), fast.theta0),
        "(b') sb.NeuralODE, general FlatModel": (
            jax.jit(jax.value_and_grad(bridge_loss(general, adjoint, ts, y0, data))),
            general.theta0),
    }  # fmt: skip


def step_table(repeats: int, ts, y0, data) -> str:
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0), dtype=jnp.float64)
    lines = [
        "| adjoint | contender | ms / loss+grad step | ratio to (a') | max abs grad diff |",
        "|---|---|---:|---:|---:|",
    ]
    for adjoint_name, adjoint in ADJOINTS.items():
        contenders = step_contenders(adjoint, mlp, ts, y0, data)
        times = median_seconds(contenders, repeats)
        grads = {
            name: jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(step(arg)[1])])
            for name, (step, arg) in contenders.items()
        }
        base = "(a') Diffrax example: jax.jit over arrays"
        for name, seconds in times.items():
            diff = float(jnp.max(jnp.abs(grads[name] - grads[base])))
            lines.append(
                f"| {adjoint_name} | {name} | {1e3 * seconds:.2f} | "
                f"{seconds / times[base]:.2f}x | {diff:.1e} |"
            )
    return "\n".join(lines)


def fit_table(adam_steps: int, bfgs_steps: int) -> str:
    """The spiral fit of the example: first call (with compilation) and a repeat (without)."""
    spiral = load_script("examples/neural_ode/spiral.py", command="bench")
    ts, y0, data = spiral.spiral_data()
    node, theta0 = spiral.make_node(50, 0)

    def loss(theta, data):
        return jnp.mean((node(theta, y0, ts) - data) ** 2)

    runs = []
    for _ in range(2):
        adam = sb.minimize(loss, theta0, "adam", args=(data,), max_steps=adam_steps,
                           learning_rate=1e-2, progress=False, throw=False)  # fmt: skip
        bfgs = sb.minimize(loss, adam.theta, "bfgs", args=(data,), max_steps=bfgs_steps,
                           progress=False, throw=False)  # fmt: skip
        runs.append((adam, bfgs))
    (adam0, bfgs0), (adam1, bfgs1) = runs
    return "\n".join([
        "| phase | steps | loss reached | s (first call, compile incl.) | s (after compile) |",
        "|---|---:|---:|---:|---:|",
        f"| Adam (lr 1e-2) | {adam1.steps} | {adam1.loss:.2e} | {adam0.wall_time:.2f} | "
        f"{adam1.wall_time:.2f} |",
        f"| BFGS (from Adam) | {bfgs1.steps} | {bfgs1.loss:.2e} | {bfgs0.wall_time:.2f} | "
        f"{bfgs1.wall_time:.2f} |",
    ])  # fmt: skip


# Diffrax's neural-ODE example (docs, "Neural ODE"): data, model and training strategy.
OSC_CONTROLLER = diffrax.PIDController(rtol=1e-3, atol=1e-6)
STRATEGY = ((3e-3, 500, 0.1), (3e-3, 500, 1.0))  # (learning rate, steps, fraction of series)


def oscillator_data(dataset_size: int = 256, *, key):
    """`(ts, ys)`: nonlinear oscillators `dy/dt = (x1, -x0)`, `x = y / (1 + y)`."""
    ts = jnp.linspace(0, 10, 100)

    def one(key):
        y0 = jax.random.uniform(key, (2,), minval=-0.6, maxval=1)
        f = lambda t, y, args: (lambda x: jnp.stack([x[1], -x[0]]))(y / (1 + y))
        sol = diffrax.diffeqsolve(diffrax.ODETerm(f), diffrax.Tsit5(), ts[0], ts[-1], 0.1, y0,
                                  saveat=diffrax.SaveAt(ts=ts))  # fmt: skip
        return sol.ys

    return ts, jax.vmap(one)(jax.random.split(key, dataset_size))


class OscFunc(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def diffrax_solve(func, ts, y0):
    sol = diffrax.diffeqsolve(diffrax.ODETerm(func), diffrax.Tsit5(), ts[0], ts[-1],
                              ts[1] - ts[0], y0, saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=OSC_CONTROLLER)  # fmt: skip
    return sol.ys


def batches(ys, batch_size: int, *, key):
    """The example's loader: a new permutation per epoch, full batches only."""
    n = ys.shape[0]
    while True:
        key, sub = jax.random.split(key)
        perm = jax.random.permutation(sub, n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield ys[perm[start : start + batch_size]]


def train_diffrax_example(mlp, ts, ys, key, scale: float):
    """Diffrax's loop; returns the final loss and seconds per step (after each compile)."""

    @eqx.filter_value_and_grad
    def grad_loss(func, ti, yi):
        y_pred = jax.vmap(diffrax_solve, in_axes=(None, None, 0))(func, ti, yi[:, 0])
        return jnp.mean((yi - y_pred) ** 2)

    func, times, value = OscFunc(mlp), [], None
    for lr, steps, length in STRATEGY:
        optim = optax.adabelief(lr)
        opt_state = optim.init(eqx.filter(func, eqx.is_inexact_array))

        @eqx.filter_jit
        def make_step(ti, yi, func, opt_state):
            value, grads = grad_loss(func, ti, yi)
            updates, opt_state = optim.update(grads, opt_state)
            return value, eqx.apply_updates(func, updates), opt_state

        n = int(ts.shape[0] * length)
        loader = batches(ys[:, :n], 32, key=key)
        for step, yi in zip(range(max(2, int(steps * scale))), loader):
            start = time.perf_counter()
            value, func, opt_state = make_step(ts[:n], yi, func, opt_state)
            jax.block_until_ready(value)
            if step:
                times.append(time.perf_counter() - start)
    return float(value), statistics.mean(times)


def train_sb_example(fm, ts, ys, key, scale: float):
    """The same strategy through `sb.minimize(batch_size=32, key=key)`; timed on a second run
    (the first compiles; `wall_time` includes compilation)."""
    node = sb.NeuralODE(fm, stepsize_controller=OSC_CONTROLLER, dt0=ts[1] - ts[0])

    def segment_loss(ti):
        return lambda theta, yi: jnp.mean(
            (jax.vmap(node, in_axes=(None, 0, None))(theta, yi[:, 0], ti) - yi) ** 2)

    # One loss object per segment, built once: the second `run()` reuses the compiled loops.
    segments = [(lr, max(2, int(n_steps * scale)), int(ts.shape[0] * length))
                for lr, n_steps, length in STRATEGY]
    losses = [segment_loss(ts[:n]) for _, _, n in segments]

    def run():
        theta, seconds, steps, res = fm.theta0, 0.0, 0, None
        for (lr, n_steps, n), loss in zip(segments, losses):
            res = sb.minimize(loss, theta, "adabelief", args=(ys[:, :n],), batch_size=32, key=key,
                              max_steps=n_steps, learning_rate=lr, progress=False,
                              throw=False)  # fmt: skip
            theta, seconds, steps = res.theta, seconds + res.wall_time, steps + res.steps
        return res.loss, seconds / steps

    run()
    return run()


def diffrax_example_steps(mlp, ts, ys, key, chunk: int) -> dict:
    """`{name: (fn, ())}`: each call runs `chunk` training steps on the whole series from the
    same initial weights (the adaptive solver's work depends on the weights), so `per_call`
    can time the three contenders in turns under the same machine load."""
    func0, optim = OscFunc(mlp), optax.adabelief(3e-3)
    opt_state0 = optim.init(eqx.filter(func0, eqx.is_inexact_array))

    @eqx.filter_value_and_grad
    def grad_loss(func, yi):
        return jnp.mean((yi - jax.vmap(diffrax_solve, (None, None, 0))(func, ts, yi[:, 0])) ** 2)

    @eqx.filter_jit
    def make_step(yi, func, opt_state):
        value, grads = grad_loss(func, yi)
        updates, opt_state = optim.update(grads, opt_state)
        return value, eqx.apply_updates(func, updates), opt_state

    loader = batches(ys, 32, key=key)

    def diffrax_steps():
        func, opt_state, value = func0, opt_state0, None
        for _, yi in zip(range(chunk), loader):
            value, func, opt_state = make_step(yi, func, opt_state)
        return value

    node_loss = lambda node: lambda theta, yi: jnp.mean(
        (jax.vmap(node, in_axes=(None, 0, None))(theta, yi[:, 0], ts) - yi) ** 2)
    calls = {"Diffrax example (filter_jit step, Python loop)": (diffrax_steps, ())}
    for name, fm in (("fast path (FlatMLP)", sb.flat(mlp)),
                     ("general path (fast=False)", sb.flat(mlp, fast=False))):
        loss = node_loss(sb.NeuralODE(fm, stepsize_controller=OSC_CONTROLLER, dt0=ts[1] - ts[0]))
        calls[f"sb.NeuralODE, {name} + sb.minimize(batch_size=32)"] = (
            lambda loss=loss, fm=fm: sb.minimize(
                loss, fm.theta0, "adabelief", args=(ys,), batch_size=32, key=key,
                max_steps=chunk, learning_rate=3e-3, progress=False, throw=False).theta, ())
    return calls


def diffrax_example_table(scale: float = 1.0) -> str:
    """Final loss of each full training run; time per step from interleaved chunks."""
    data_key, model_key, loader_key = jax.random.split(jax.random.key(5678), 3)
    ts, ys = oscillator_data(key=data_key)
    mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jax.nn.softplus, final_activation=jnp.tanh,
                     key=model_key, dtype=jnp.float64)  # fmt: skip
    losses = {"Diffrax example (filter_jit step, Python loop)":
              train_diffrax_example(mlp, ts, ys, loader_key, scale)[0]}  # fmt: skip
    for name, fm in (("fast path (FlatMLP)", sb.flat(mlp)),
                     ("general path (fast=False)", sb.flat(mlp, fast=False))):
        losses[f"sb.NeuralODE, {name} + sb.minimize(batch_size=32)"] = train_sb_example(
            fm, ts, ys, loader_key, scale)[0]
    chunk = max(2, int(20 * scale))
    seconds = per_call(diffrax_example_steps(mlp, ts, ys, loader_key, chunk), 1,
                       5 if scale >= 1 else 2)
    base = seconds["Diffrax example (filter_jit step, Python loop)"]
    lines = ["| contender | final loss | ms / step | ratio to Diffrax |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {losses[name]:.2e} | {1e3 * seconds[name] / chunk:.2f} | "
              f"{seconds[name] / base:.2f}x |" for name in seconds]
    return "\n".join(lines)


def main(repeats: int = 100, quick: bool = False) -> str:
    """Print both tables and write them to `benchmarks/results/neural_ode.md`."""
    spiral = load_script("examples/neural_ode/spiral.py", command="bench")
    ts, y0, data = spiral.spiral_data()
    steps = step_table(repeats, ts, y0, data)
    fit = fit_table(*((50, 50) if quick else (500, 500)))
    example = diffrax_example_table(0.05 if quick else 1.0)
    device = jax.devices()[0].device_kind
    text = "\n".join([
        f"Neural ODE spiral (2 -> 50 -> 2 tanh on y**3, Tsit5, PID 1e-6, float64, {device}, "
        f"median of {repeats}). Target: (b) within 1.05x of (a).",
        "",
        steps,
        "",
        "Full spiral fit (`examples/neural_ode/spiral.py`). Targets: Adam 500 steps < 5 s after "
        "compilation; BFGS to loss <= 1e-3.",
        "",
        fit,
        "",
        "Diffrax's neural-ODE example as in its docs (256 oscillators, minibatches of 32, "
        "AdaBelief 3e-3, 500 steps on 10% of each series then 500 on all). Target: same final "
        "loss within noise, sb <= 1.1x Diffrax's time per step on both paths. Final loss: each "
        "full training run once; ms / step: chunks of 20 steps on the whole series from the same "
        "initial weights, the three contenders in turns (median of 5).",
        "",
        example,
    ])  # fmt: skip
    write_result(__file__, text)
    return text


if __name__ == "__main__":
    main()
