"""Classify clockwise vs anticlockwise spirals with a neural CDE (Diffrax's example, reduced).

Data as in Diffrax's neural CDE example: 2-D spirals observed at 100 times on [0, 4 pi], time
included as a channel, interpolated by Hermite cubics with backward differences; half of them
mirrored (label 1). Model as there: `z0 = initial(x(t0))`, `dz = f(z) dX`, prediction
`sigmoid(linear(z(t1)))`, with the three networks as one flat `theta` and the CDE solved by
`sb.NeuralCDE`. Trained with Adam through `sb.minimize`; accuracy on fresh test spirals.

Run: `python examples/neural_ode/spiral_cde.py` (prints loss, accuracy and time).
"""

import math
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy as jsp

import sciml_bridge as sb


jax.config.update("jax_enable_x64", True)

CONTROLLER = diffrax.PIDController(rtol=1e-3, atol=1e-6)


def get_data(dataset_size: int, *, key, length: int = 100):
    """`(ts, coeffs, labels, x0)`: Diffrax's spiral data set; `x0` is the data at `ts[0]`."""
    theta = jax.random.uniform(key, (dataset_size,), minval=0, maxval=2 * math.pi)
    y0 = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    ts = jnp.linspace(0, 4 * math.pi, length)
    matrix = jnp.array([[-0.3, 2], [-2, -0.3]])
    ys = jax.vmap(lambda y0i: jax.vmap(lambda t: jsp.linalg.expm(t * matrix) @ y0i)(ts))(y0)
    ys = jnp.concatenate([jnp.broadcast_to(ts[None, :, None], (dataset_size, length, 1)), ys],
                         axis=-1)  # time is a channel
    ys = ys.at[: dataset_size // 2, :, 1].multiply(-1)
    coeffs = jax.vmap(diffrax.backward_hermite_coefficients, in_axes=(None, 0))(ts, ys)
    labels = jnp.zeros(dataset_size).at[: dataset_size // 2].set(1.0)
    return ts, coeffs, labels, ys[:, 0, :]


class Field(eqx.Module):
    """Diffrax's `Func`: the MLP's output as a `(hidden, channels)` matrix."""

    mlp: eqx.nn.MLP
    shape: tuple[int, int] = eqx.field(static=True)

    def __call__(self, z):
        return self.mlp(z).reshape(self.shape)


class Classifier:
    """The three flat networks of Diffrax's `NeuralCDE` and the CDE, as `f(theta, ...)`."""

    def __init__(self, data_size=3, hidden_size=8, width_size=128, depth=1, *, key,
                 stepsize_controller=CONTROLLER):
        ikey, fkey, lkey = jax.random.split(key, 3)
        self.initial = sb.flat(eqx.nn.MLP(data_size, hidden_size, width_size, depth, key=ikey))
        mlp = eqx.nn.MLP(hidden_size, hidden_size * data_size, width_size, depth,
                         activation=jax.nn.softplus, final_activation=jnp.tanh, key=fkey)
        self.func = sb.flat(Field(mlp, (hidden_size, data_size)))
        self.readout = sb.flat(eqx.nn.Linear(hidden_size, 1, key=lkey))
        # The flat model itself, not a lambda around it: `sb.NeuralCDE` rebuilds a flat model
        # into its network once per solve (a lambda would slice `theta` at every stage).
        self.cde = sb.NeuralCDE(self.func, stepsize_controller=stepsize_controller,
                                saveat=diffrax.SaveAt(t1=True))  # fmt: skip

    @property
    def theta0(self):
        return jnp.concatenate([self.initial.theta0, self.func.theta0, self.readout.theta0])

    def predict(self, theta, ts, coeffs, x0):
        """Probability of label 1 for one series."""
        a, b = self.initial.size, self.initial.size + self.func.size
        z1 = self.cde(theta[a:b], self.initial(theta[:a], x0), ts, coeffs)[-1]
        return jax.nn.sigmoid(self.readout(theta[b:], z1))[0]

    def loss(self, theta, coeffs, labels, x0, ts):
        """Binary cross-entropy over a batch (the loss of Diffrax's example)."""
        pred = jax.vmap(self.predict, in_axes=(None, None, 0, 0))(theta, ts, coeffs, x0)
        return -jnp.mean(labels * jnp.log(pred) + (1 - labels) * jnp.log(1 - pred))

    def accuracy(self, theta, ts, coeffs, labels, x0):
        pred = jax.vmap(self.predict, in_axes=(None, None, 0, 0))(theta, ts, coeffs, x0)
        return float(jnp.mean((pred > 0.5) == (labels == 1)))


def make_loss(model, ts):
    """`loss(theta, coeffs, labels, x0)`: every array argument has the series as leading axis."""
    return lambda theta, coeffs, labels, x0: model.loss(theta, coeffs, labels, x0, ts)


def train(loss, theta0, coeffs, labels, x0, *, steps, lr, batch_size, key, progress):
    """Adam through `sb.minimize`, minibatches drawn inside the compiled loop (every array of
    `args` shares the leading axis: the series)."""
    res = sb.minimize(loss, theta0, "adam", args=(coeffs, labels, x0), max_steps=steps,
                      learning_rate=lr, progress=progress, throw=False, batch_size=batch_size,
                      key=key)
    return res, batch_size


def main(dataset_size: int = 256, width_size: int = 128, steps: int = 60, lr: float = 1e-2,
         batch_size: int = 32, length: int = 100, seed: int = 5678,
         progress: bool = True) -> dict:
    """Train and test; print and return loss, test accuracy and time."""
    train_key, test_key, model_key, loader_key = jax.random.split(jax.random.key(seed), 4)
    ts, coeffs, labels, x0 = get_data(dataset_size, key=train_key, length=length)
    model = Classifier(width_size=width_size, key=model_key)
    start = time.perf_counter()
    res, batch = train(make_loss(model, ts), model.theta0, coeffs, labels, x0, steps=steps,
                       lr=lr, batch_size=batch_size, key=loader_key, progress=progress)
    seconds = time.perf_counter() - start
    ts_test, coeffs_test, labels_test, x0_test = get_data(dataset_size, key=test_key, length=length)
    accuracy = model.accuracy(res.theta, ts_test, coeffs_test, labels_test, x0_test)
    print(f"spiral_cde: {res.steps} Adam steps (batch {batch}), loss {res.loss:.3e}, "
          f"{seconds:.1f} s (compile incl.)")
    print(f"spiral_cde: test accuracy {accuracy:.3f}")
    return dict(loss=res.loss, accuracy=accuracy, time=seconds, steps=res.steps, batch=batch,
                theta=res.theta)


if __name__ == "__main__":
    main()
