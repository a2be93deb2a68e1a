"""The peers users would pick instead of sciml_bridge, set up on the same problem and weights.

folx (`folx.forward_laplacian`), PyTorch (`nn.Sequential`, `torch.func`, `torch.compile`) and
torchdiffeq (`odeint`, `odeint_adjoint`). They live in the `bench` extra (`make bench`), never
in `make test`: each helper here returns `None` with a reason when its peer is missing, and the
tables print that reason as a row ("not installed") instead of dropping the peer.

Every PyTorch model is built from the weights of an `eqx.nn.MLP` (or an `sb.FlatMLP`'s `theta`),
in the same dtype, so each row computes the same numbers as the JAX rows next to it.
"""

import importlib
import time
from collections.abc import Callable

import equinox as eqx
import numpy as np


INSTALL = "not installed (`make bench` or `pip install -e '.[bench]'`)"


def optional(name: str):
    """`(module, None)` when `name` imports, else `(None, reason)` for the table row.

    PyTorch runs with one intra-op thread: these problems are tiny (one point, a 10-wide
    layer), and on the 2-core benchmark machine under load two OpenMP threads spinning against
    each other made the tiny PINN's Adam step 10-15x slower (measured: 116 ms vs 7.3 ms/step).
    """
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None, INSTALL
    if name == "torch":
        module.set_num_threads(1)
    return module, None


# ---- folx ---------------------------------------------------------------------------------


def folx_laplacian(fm: Callable) -> tuple[Callable | None, str | None]:
    """`lap(theta, x)` by `folx.forward_laplacian` of the same flat model, or `(None, why)`."""
    folx, why = optional("folx")
    if folx is None:
        return None, why

    def lap(theta, x):
        return folx.forward_laplacian(lambda v: fm(theta, v))(x).laplacian

    return lap, None


# ---- PyTorch: the same MLP ----------------------------------------------------------------


def torch_dtype(dtype):
    torch, _ = optional("torch")
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def torch_mlp(mlp: eqx.nn.MLP, dtype):
    """An `nn.Sequential` of `Linear`/`Tanh` holding the weights of `mlp` (tanh hidden layers)."""
    torch, _ = optional("torch")
    layers = []
    for i, layer in enumerate(mlp.layers):
        w = np.asarray(layer.weight)
        linear = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch_dtype(dtype))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(w, dtype=dtype)))
            linear.bias.copy_(torch.from_numpy(np.array(layer.bias, dtype=dtype)))
        layers.append(linear)
        if i < len(mlp.layers) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def try_compile(fn: Callable, *args) -> tuple[Callable | None, str | None]:
    """`torch.compile(fn)` if it compiles and runs here on CPU, else `(None, why)`."""
    torch, why = optional("torch")
    if torch is None:
        return None, why
    try:
        compiled = torch.compile(fn)
        compiled(*args)
        compiled(*args)
        return compiled, None
    except Exception as e:  # inductor needs a C++ toolchain; report what failed
        return None, f"torch.compile failed on CPU: {type(e).__name__}: {str(e)[:80]}"


def torch_seed_calls(mlp: eqx.nn.MLP, x, dtype) -> dict:
    """Per-call forward and gradient of `sum((mlp(x) - 1)^2)` w.r.t. all weights.

    `name -> (forward, gradient)`, each a zero-argument callable, or a string (why missing).
    """
    torch, why = optional("torch")
    if torch is None:
        return {"PyTorch": why}
    model = torch_mlp(mlp, dtype)
    xt = torch.from_numpy(np.array(x, dtype=dtype))[None]
    params = dict(model.named_parameters())

    def forward():
        with torch.no_grad():
            return model(xt)

    def gradient():
        model.zero_grad(set_to_none=True)
        ((model(xt) - 1) ** 2).sum().backward()
        return [p.grad for p in model.parameters()]

    def func_loss(p):
        return ((torch.func.functional_call(model, p, (xt,)) - 1) ** 2).sum()

    func_grad = torch.func.grad(func_loss)
    calls = {
        "PyTorch `nn.Sequential` (eager, `.backward()`)": (forward, gradient),
        "PyTorch `torch.func.grad` + `functional_call`": (forward, lambda: func_grad(params)),
    }
    c_forward, why_f = try_compile(forward)
    c_grad, why_g = try_compile(func_grad, params)
    if c_forward is None or c_grad is None:
        calls["PyTorch `torch.compile`"] = why_f or why_g
    else:
        calls["PyTorch `torch.compile`"] = (c_forward, lambda: c_grad(params))
    return calls


# ---- PyTorch: the tiny PINN's Adam loop -----------------------------------------------------


def torch_pinn_runs(mlp: eqx.nn.MLP, x, f, steps: int, learning_rate: float = 1e-3) -> dict:
    """`name -> run()` doing `steps` Adam steps on the 1-D Poisson PINN of `training_loop.py`:
    `mean((u''(x) - f)^2) + u(0)^2 + u(1)^2`, `u''` by double backward (`create_graph=True`),
    in the dtype of `x`."""
    torch, why = optional("torch")
    if torch is None:
        return {"PyTorch": why}
    dtype = np.asarray(x).dtype  # the JAX rows' dtype (float64 under `sciml-bridge bench`)
    xt = torch.from_numpy(np.array(x, dtype=dtype))[:, None]
    ft = torch.from_numpy(np.array(f, dtype=dtype))
    ends = torch.tensor([[0.0], [1.0]], dtype=torch_dtype(dtype))

    def loss_of(model):
        xs = xt.clone().requires_grad_(True)
        u = model(xs)
        (du,) = torch.autograd.grad(u.sum(), xs, create_graph=True)
        (d2u,) = torch.autograd.grad(du.sum(), xs, create_graph=True)
        return ((d2u[:, 0] - ft) ** 2).mean() + (model(ends) ** 2).sum()

    def runner(compiled: bool):
        model = torch_mlp(mlp, dtype)
        start = [p.detach().clone() for p in model.parameters()]

        def gradient(model):
            loss = loss_of(model)
            loss.backward()
            return loss

        # Compiled once per model (the same module object every run, so no recompilation).
        grad_fn = torch.compile(gradient) if compiled else gradient

        def run():
            with torch.no_grad():  # every run starts from the same weights and a fresh Adam
                for p, p0 in zip(model.parameters(), start):
                    p.copy_(p0)
            opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                grad_fn(model)
                opt.step()
            return torch.cat([p.detach().ravel() for p in model.parameters()])

        return run

    runs = {"PyTorch eager (`create_graph` + `torch.optim.Adam`)": runner(False)}
    try:
        compiled = runner(True)
        compiled()
        runs["PyTorch `torch.compile` loss + backward"] = compiled
    except Exception as e:
        runs["PyTorch `torch.compile` loss + backward"] = (
            f"torch.compile failed on CPU: {type(e).__name__}: {str(e)[:80]}")
    return runs


# ---- torchdiffeq: the spiral neural ODE ----------------------------------------------------


def torchdiffeq_steps(mlp: eqx.nn.MLP, ts, y0, data, rtol: float, atol: float) -> dict:
    """`name -> step()`: one loss + gradient of `mean((odeint(f, y0, ts) - data)^2)` for
    `f(t, y) = mlp(y**3)` in float64, Dormand-Prince 5(4), by `odeint` (backpropagation
    through the solver) and by `odeint_adjoint` (backsolve adjoint)."""
    torch, why = optional("torch")
    tde, why_tde = optional("torchdiffeq")
    if torch is None or tde is None:
        return {"torchdiffeq": why or why_tde}

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch_mlp(mlp, np.float64)

        def forward(self, t, y):
            return self.net(y**3)

    field = Field()
    t = torch.from_numpy(np.array(ts, np.float64))
    y = torch.from_numpy(np.array(y0, np.float64))
    target = torch.from_numpy(np.array(data, np.float64))

    def stepper(solve):
        def step():
            field.zero_grad(set_to_none=True)
            pred = solve(field, y, t, rtol=rtol, atol=atol, method="dopri5")
            loss = ((pred - target) ** 2).mean()
            loss.backward()
            return [p.grad for p in field.parameters()]

        return step

    return {
        "torchdiffeq `odeint` (backprop through the solver)": stepper(tde.odeint),
        "torchdiffeq `odeint_adjoint` (backsolve adjoint)": stepper(tde.odeint_adjoint),
    }


def median_seconds(run: Callable, repeats: int) -> float:
    """Median seconds of `run()` over `repeats` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
