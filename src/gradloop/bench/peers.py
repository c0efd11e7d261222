"""bench's peers: the same training written with other frameworks, each in a process of its own.

    python -m gradloop.bench.peers PEER REQUEST_JSON    (started by gradloop.bench.runner, not by hand)

A process of its own keeps the frameworks from colliding (each brings its own
threads, allocator and compiler) and gives each peer its own peak RSS. As
:mod:`gradloop.bench.worker`, the process sets itself up, then answers requests,
one JSON line in and one out (:mod:`gradloop.bench.protocol`), until its input ends; it trains only
when asked:

    set up                     -> {"first_logits": [...], "framework": "..."}
    {"steps": n}               -> {"steps", "samples", "seconds", "loss", "accuracy"}   the next n batches (at least)
    {"stop": true} or no input -> {"peak_rss_mib", "added_rss_mib"}, and exits
    a failure, at any point    -> {"error": "...", "kind": "ConfigError"}, and exits

REQUEST_JSON names a folder holding the data (``x.npy``, ``y.npy``) and the initial
weights of bench's Keras model (``weights.npz``), and the workload's settings. The
peers (``gradloop.bench.names.PEERS``):

    keras-jax spe=1, spe=32   Keras ``model.fit`` on the JAX backend (the bench sets KERAS_BACKEND=jax)
    jax jit                   a hand-written step (forward, loss, gradients, Keras' Adam) under ``jax.jit``,
                              one call per step
    jax scan                  the same step, 32 per call: ``jax.lax.scan`` over the epoch's batches on the device
    torch                     a plain PyTorch eager loop with ``torch.optim.Adam``, on torch's default thread count

Each builds ``Workload.layers()`` from the same initial weights (Glorot-uniform,
zero biases: Keras' defaults), trains at the same batch size and learning rate
on each epoch's full batches in a new order every epoch (the partial last batch
is left out: the JAX loops' shapes are fixed), and sums its loss and correct
predictions as it goes, as the Keras and gradloop variants track accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from gradloop import errors
from gradloop.bench.memory import PeakRSS, peak_rss_since_reset_mib
from gradloop.bench.names import PEERS, PEERS_INSTALL
from gradloop.bench.protocol import protocol_stream, reply
from gradloop.bench.workload import Layer, Workload, keras_loss

# Keras' Adam defaults, which the hand-written JAX update and torch's Adam use too.
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7
SCAN_STEPS = 32  # steps per call of the jax scan peer, as gradloop's default steps per call
CHECKED_SAMPLES = 8  # the samples whose logits, from the initial weights, each peer must reproduce


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    replies = protocol_stream()
    try:
        name, request = argv[0], json.loads(argv[1])
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; one of {', '.join(PEERS)}")
        framework = import_framework(name)
        work, weights = read_workload(request)
        set_up_peak = peak_rss_since_reset_mib()  # the framework imported and the data read
        with PeakRSS() as rss:
            peer = build_peer(name, work, weights)
            reply(replies, {"first_logits": peer.logits(work.x[:CHECKED_SAMPLES]).tolist(), "framework": framework})
            for line in sys.stdin:
                asked = json.loads(line)
                if asked.get("stop"):
                    break
                reply(replies, peer.train(int(asked["steps"])))
        whole = None if rss.peak is None else max(set_up_peak, rss.peak / 1024)
        reply(replies, {"peak_rss_mib": whole, "added_rss_mib": rss.mib})
        return 0
    except Exception as exc:  # sent to the bench, which raises it in the CLI's process
        if not isinstance(exc, errors.GradloopError):
            traceback.print_exc()
        reply(replies, {"error": str(exc), "kind": type(exc).__name__})
        return 1


def import_framework(name: str) -> str:
    """Import the peer's framework; its name and version, as the table names it. A missing one is a ConfigError."""
    package = PEERS[name]
    try:
        if name.startswith("keras-jax"):
            os.environ.setdefault("KERAS_BACKEND", "jax")  # as the bench does, for a process started by hand
            import jax
            import keras

            if keras.backend.backend() != "jax":
                raise errors.ConfigError(
                    f"{name} needs KERAS_BACKEND=jax before Keras is imported, and Keras "
                    f"runs on {keras.backend.backend()}; unset KERAS_BACKEND"
                )
            return f"keras {keras.__version__} on jax {jax.__version__}"
        if package == "jax":
            import jax

            return f"jax {jax.__version__}"
        import torch

        return f"torch {torch.__version__}, {torch.get_num_threads()} threads (its default)"
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise
        raise errors.ConfigError(
            f"bench variant {name!r} needs {package}, which is not installed; install the peers with: {PEERS_INSTALL}"
        ) from None


def read_workload(request: dict[str, Any]) -> tuple[Workload, list[np.ndarray]]:
    """The bench's data and settings, and the initial weights of its Keras model, in Keras' order."""
    folder = Path(request["folder"])
    settings = {**request["workload"], "hidden": tuple(request["workload"]["hidden"])}
    work = Workload(np.load(folder / "x.npy"), np.load(folder / "y.npy"), **settings)
    with np.load(folder / "weights.npz") as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return work, weights


def build_peer(name: str, work: Workload, weights: list[np.ndarray]) -> Any:
    """The peer's model, optimizer and data, ready to train: ``logits(x)`` and ``train(steps)``."""
    errors.check_batch_size(work.batch_size, len(work.x))
    if name.startswith("keras-jax"):
        return KerasFit(work, weights, steps_per_execution=int(name.rsplit("=", 1)[1]))
    if name.startswith("jax"):
        return JaxLoop(work, weights, steps_per_call=SCAN_STEPS if name == "jax scan" else 1)
    return TorchLoop(work, weights)


def _timed_result(steps: int, batch_size: int, seconds: float, loss_sum: float, correct: float) -> dict[str, Any]:
    samples = steps * batch_size
    return {
        "steps": steps,
        "samples": samples,
        "seconds": seconds,
        "loss": loss_sum / steps,
        "accuracy": correct / samples,
    }


class KerasFit:
    """Keras ``model.fit`` on the JAX backend, on the arrays, shuffled by Keras: bench's Keras model compiled
    as its ``keras spe=N`` variants compile it. Each ``fit`` call trains at most an epoch's full batches."""

    def __init__(self, work: Workload, weights: list[np.ndarray], *, steps_per_execution: int) -> None:
        import keras

        self.work, self.x, self.y = work, work.x, work.y
        self.model = work.model(seeded=False)
        self.model.set_weights(weights)
        np.random.seed(work.seed)  # Keras shuffles the arrays with NumPy's global generator
        full_batches = len(work.x) // work.batch_size
        self.steps_per_execution = min(steps_per_execution, full_batches)  # no call runs past an epoch's end
        self.per_fit = full_batches // self.steps_per_execution * self.steps_per_execution
        self.model.compile(
            optimizer=keras.optimizers.Adam(work.lr),
            loss=keras_loss(),
            metrics=["accuracy"],
            steps_per_execution=self.steps_per_execution,
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(x))

    def train(self, steps: int) -> dict[str, Any]:
        import jax

        left = -(-steps // self.steps_per_execution) * self.steps_per_execution
        steps, loss_sum, correct = left, 0.0, 0.0
        start = time.perf_counter()
        while left:
            now = min(left, self.per_fit)
            logs = self.model.fit(
                self.x, self.y, batch_size=self.work.batch_size, epochs=1, steps_per_epoch=now, shuffle=True, verbose=0
            ).history
            loss_sum += logs["loss"][0] * now
            correct += logs["accuracy"][0] * now * self.work.batch_size
            left -= now
        jax.block_until_ready(self.model.trainable_variables[0].value)
        return _timed_result(steps, self.work.batch_size, time.perf_counter() - start, loss_sum, correct)


class JaxLoop:
    """A hand-written training step under ``jax.jit``: forward, sparse cross-entropy from logits, gradients,
    and Keras' Adam update (the same formula), run ``steps_per_call`` steps per call: 1, or more by
    ``jax.lax.scan``. Each epoch's batches are drawn on the device, in a new order, before its first call:

        for each call: state = step(state, batch) for each of its steps_per_call batches
    """

    def __init__(self, work: Workload, weights: list[np.ndarray], *, steps_per_call: int) -> None:
        import jax
        import jax.numpy as jnp

        self.work, b, n = work, work.batch_size, len(work.x)
        self.per_call = min(steps_per_call, n // b)
        self.batches = n // b // self.per_call * self.per_call  # an epoch's full batches, in whole calls
        self.x, self.y = jnp.asarray(work.x), jnp.asarray(work.y.astype(np.int32))
        params = [(jnp.asarray(w), jnp.asarray(bias)) for w, bias in zip(weights[::2], weights[1::2])]
        m, v = (jax.tree.map(jnp.zeros_like, params) for _ in range(2))
        self.state = (params, m, v, jnp.zeros((), jnp.int32))  # weights, Adam's two slots, its step count
        self.forward = _jax_forward(work.layers())
        self.key, self.epoch, self.at = jax.random.PRNGKey(work.seed), 0, self.batches  # no epoch drawn yet
        step = _jax_step(self.forward, work.lr)
        per_call = self.per_call

        def call(state, totals, xs, ys, at):
            if per_call == 1:
                return step((state, totals), (xs[at], ys[at]))[0]
            chunk = (jax.lax.dynamic_slice_in_dim(xs, at, per_call), jax.lax.dynamic_slice_in_dim(ys, at, per_call))
            return jax.lax.scan(step, (state, totals), chunk)[0]

        def draw(x, y, key):  # an epoch's batches, in a new order: (batches, batch size, ...)
            order = jax.random.permutation(key, n)[: self.batches * b]
            return x[order].reshape(self.batches, b, *x.shape[1:]), y[order].reshape(self.batches, b)

        self._call = jax.jit(call, donate_argnums=(0, 1))
        self._draw = jax.jit(draw)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.forward(self.state[0], x))

    def train(self, steps: int) -> dict[str, Any]:
        import jax
        import jax.numpy as jnp

        calls = -(-steps // self.per_call)
        totals = (jnp.zeros(()), jnp.zeros((), jnp.int32))  # loss sum, correct predictions
        start = time.perf_counter()
        for _ in range(calls):
            if self.at == self.batches:
                self.xs = self.ys = None  # the last epoch's batches go first: two copies of the data at most
                self.xs, self.ys = self._draw(self.x, self.y, jax.random.fold_in(self.key, self.epoch))
                self.epoch, self.at = self.epoch + 1, 0
            self.state, totals = self._call(self.state, totals, self.xs, self.ys, self.at)
            self.at += self.per_call
        loss_sum, correct = (float(v) for v in totals)  # waits for the last step
        seconds = time.perf_counter() - start
        return _timed_result(calls * self.per_call, self.work.batch_size, seconds, loss_sum, correct)


def _jax_forward(layers: tuple[Layer, ...]) -> Any:
    """``forward(params, x) -> logits`` for ``layers``, with ``params`` a (kernel, bias) pair per dense or conv layer,
    in Keras' layouts (dense: in x out; conv: height x width x in x out, on NHWC images)."""
    import jax
    import jax.numpy as jnp

    def forward(params, x):
        weights = iter(params)
        for layer in layers:
            if layer.kind == "dense":
                w, b = next(weights)
                x = x @ w + b
            elif layer.kind == "conv":
                w, b = next(weights)
                x = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
            elif layer.kind == "pool":
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            else:
                x = x.reshape(x.shape[0], -1)
            if layer.relu:
                x = jax.nn.relu(x)
        return x

    return forward


def _jax_step(forward: Any, lr: float) -> Any:
    """``step((state, totals), (x, y)) -> ((state, totals), None)``: one training step, in ``jax.lax.scan``'s form."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, x, y):
        logits = forward(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)), logits

    def step(carry, batch):
        (params, m, v, t), (loss_sum, correct) = carry
        x, y = batch
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        t = t + 1
        alpha = lr * jnp.sqrt(1 - BETA_2 ** t.astype(jnp.float32)) / (1 - BETA_1 ** t.astype(jnp.float32))
        m = jax.tree.map(lambda m, g: m + (g - m) * (1 - BETA_1), m, grads)
        v = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - BETA_2), v, grads)
        params = jax.tree.map(lambda p, m, v: p - alpha * m / (jnp.sqrt(v) + EPSILON), params, m, v)
        totals = (loss_sum + loss, correct + jnp.sum(jnp.argmax(logits, axis=1) == y))
        return ((params, m, v, t), totals), None

    return step


class TorchLoop:
    """A plain PyTorch loop: for each batch, forward, cross-entropy, backward, ``torch.optim.Adam`` step.
    Images are NCHW, as torch's convolutions take them; the weights are Keras' in torch's layouts."""

    def __init__(self, work: Workload, weights: list[np.ndarray]) -> None:
        import torch

        self.torch, self.work = torch, work
        images = work.x.ndim == 4
        self.x = torch.from_numpy(np.ascontiguousarray(work.x.transpose(0, 3, 1, 2)) if images else work.x)
        self.y = torch.from_numpy(work.y.astype(np.int64))
        self.model = _torch_model(work, weights)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=work.lr, betas=(BETA_1, BETA_2), eps=EPSILON)
        self.generator = torch.Generator().manual_seed(work.seed)
        self.batches, self.at = len(work.x) // work.batch_size, len(work.x) // work.batch_size  # no epoch drawn yet

    def logits(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x)
            return self.model(x).numpy()

    def train(self, steps: int) -> dict[str, Any]:
        torch, b = self.torch, self.work.batch_size
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        start = time.perf_counter()
        for _ in range(steps):
            if self.at == self.batches:
                self.order, self.at = torch.randperm(len(self.x), generator=self.generator), 0
            rows = self.order[self.at * b : (self.at + 1) * b]
            self.at += 1
            x, y = self.x[rows], self.y[rows]
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(dim=1) == y).sum()
        loss_sum, correct = loss_sum.item(), correct.item()
        return _timed_result(steps, b, time.perf_counter() - start, loss_sum, correct)


def _torch_model(work: Workload, weights: list[np.ndarray]) -> Any:
    """``work.layers()`` as a ``torch.nn.Sequential``, with Keras' weights moved to torch's layouts: a dense
    kernel transposed, a conv kernel from HWIO to OIHW, and the rows of a dense layer after a flatten
    reordered from Keras' height-width-channel order to torch's channel-height-width."""
    import torch

    modules, pairs, flattened = [], iter(zip(weights[::2], weights[1::2])), None
    for layer, shape_in, _ in work.shapes():
        if layer.kind == "dense":
            kernel, bias = next(pairs)
            if flattened is not None:  # the dense layer right after a flatten of images
                kernel = kernel.reshape(*flattened, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
            module = torch.nn.Linear(*kernel.shape)
            module.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
        elif layer.kind == "conv":
            kernel, bias = next(pairs)
            module = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel_size=3)
            module.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        elif layer.kind == "pool":
            module = torch.nn.MaxPool2d(2)
        else:
            module = torch.nn.Flatten()
        if layer.kind in ("dense", "conv"):
            module.bias.data = torch.from_numpy(bias.copy())
        flattened = shape_in if layer.kind == "flatten" and len(shape_in) == 3 else None
        modules.append(module)
        if layer.relu:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


if __name__ == "__main__":
    sys.exit(main())
