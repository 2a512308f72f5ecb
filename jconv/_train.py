"""``jconv train``: the LeNet-style CNN on real images, every gradient hand-derived.

The loop is an ordinary jit-compiled optax loop (params and optimizer state
donated). Checkpoints hold params, optimizer state, epoch, the shuffling RNG's
state and the last epoch's data order, so ``--resume`` continues bit-identically.
``--compare-autodiff`` trains the same network written with plain lax/jnp (JAX's
autodiff) from the same initial params and data order, in the same process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _checkpoint, autodiff, data, models
from ._plot import plot_curves

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
}
CHECKPOINT = "checkpoint.npz"
# Settings a resumed run must share with its checkpoint (epochs may grow).
RESUME_KEYS = ("dataset", "data_dir", "batch_size", "lr", "optimizer", "seed", "compare_autodiff")
EVAL_BATCH = 1000


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run."""

    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 25
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    seed: int = 0
    checkpoint_every: int = 1
    compare_autodiff: bool = False
    devices: int | None = None  # data-parallel devices (None: all local devices)

    def validate(self) -> None:
        if self.dataset not in ("digits", "idx"):
            raise ValueError(f"--dataset must be 'digits' or 'idx', got {self.dataset!r}")
        if self.dataset == "idx" and not self.data_dir:
            raise ValueError("--dataset idx needs --data-dir DIR")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {sorted(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0 (0: only at the end)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        available = len(jax.local_devices())
        n = available if self.devices is None else self.devices
        if not 1 <= n <= available:
            raise ValueError(f"--devices must be between 1 and {available}, got {self.devices}")
        if self.batch_size % n:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by the {n} devices the "
                f"batch is split over; use a multiple of {n} or --devices"
            )


def load_data(config: TrainConfig):
    """``(x_train, y_train, x_test, y_test)``, standardised with train statistics."""
    if config.dataset == "digits":
        x_tr, y_tr, x_te, y_te = data.load_digits()
    else:
        x_tr, y_tr, x_te, y_te = data.load_idx_dataset(config.data_dir)
    mean, std = float(x_tr.mean()), float(x_tr.std()) or 1.0
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def make_functions(optimizer: optax.GradientTransformation, ops: Any):
    """The jitted train step (donating params and state), gradients and predictor."""

    def loss_fn(params, x, y):
        return ops.softmax_cross_entropy(models.lenet_apply(params, x, ops=ops), y)

    grad_fn = jax.value_and_grad(loss_fn)

    def step(params, opt_state, x, y):
        loss, grads = grad_fn(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    def predict(params, x):
        return jnp.argmax(models.lenet_apply(params, x, ops=ops), axis=-1)

    return jax.jit(step, donate_argnums=(0, 1)), jax.jit(grad_fn), jax.jit(predict)


class DataParallel:
    """A 1-D device mesh: params replicated, batches split along axis ``"data"``.

    With one device this is the plain single-device program.
    """

    def __init__(self, n_devices: int | None = None):
        devices = jax.local_devices()
        self.n = len(devices) if n_devices is None else n_devices
        self.mesh = jax.sharding.Mesh(np.array(devices[: self.n]), ("data",))
        self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._split = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))

    def replicate(self, tree):
        return jax.device_put(tree, self._replicated)

    def shard(self, batch):
        return jax.device_put(batch, self._split)


def accuracy(predict, params, x: np.ndarray, y: np.ndarray, dp: DataParallel) -> float:
    """Accuracy in fixed-size batches (the last one padded) so nothing recompiles."""
    batch = -(-min(EVAL_BATCH, len(x)) // dp.n) * dp.n
    correct = 0
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), xb.dtype)])
        correct += int(
            np.sum(np.asarray(predict(params, dp.shard(xb)))[:n] == y[start : start + n])
        )
    return correct / len(x)


def _max_relative_difference(a, b) -> float:
    """Worst leaf of ``max|a - b| / max|b|`` over two gradient pytrees."""
    diffs = jax.tree.map(
        lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-30)),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))


class _Progress:
    """tqdm if it is installed (the demo extra), otherwise silent."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
            except ImportError:
                pass

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    arrays=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains (or resumes) a run in ``out_dir``; returns the metrics written there.

    Args:
        config: the run's settings.
        out_dir: where ``metrics.json``, ``curves.png`` and ``checkpoint.npz`` go.
        resume: continue from ``out_dir/checkpoint.npz`` (which must exist).
        arrays: ``(x_train, y_train, x_test, y_test)`` to use instead of loading.
        progress: show a tqdm bar per epoch.
        log: where summary lines go.

    Raises:
        Diverged: the loss became NaN/inf (the last good checkpoint is kept).
        CheckpointError: ``resume`` with a missing, corrupt or mismatched checkpoint.
    """
    config.validate()
    out_dir = Path(out_dir)
    x_tr, y_tr, x_te, y_te = arrays if arrays is not None else load_data(config)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    optimizer = OPTIMIZERS[config.optimizer](config.lr)
    step, _, predict = make_functions(optimizer, models.JCONV_OPS)

    def fresh_state():
        params = models.lenet_init(jax.random.key(config.seed), x_tr.shape[1:], num_classes)
        return {"params": params, "opt_state": optimizer.init(params)}

    dp = DataParallel(config.devices)
    state = fresh_state()
    rng = np.random.default_rng(config.seed)
    epoch, global_step, history, step_losses = 0, 0, [], []
    compare: dict[str, Any] = {}
    if resume:
        state, meta = _checkpoint.load(out_dir / CHECKPOINT, state)
        _check_resume(config, meta, out_dir / CHECKPOINT)
        rng.bit_generator.state = meta["shuffle_rng"]
        epoch, global_step = meta["epoch"], meta["step"]
        history, step_losses, compare = meta["history"], meta["step_losses"], meta["compare"]
        log(f"resumed {out_dir / CHECKPOINT} at epoch {epoch} (step {global_step})")
    state = dp.replicate(state)
    if config.compare_autodiff:
        # The same network in plain lax/jnp: jconv.autodiff has the same layer names.
        auto_step, auto_grads, _ = make_functions(optimizer, autodiff)
        state["auto"] = jax.tree.map(jnp.copy, {k: state[k] for k in ("params", "opt_state")})
        if resume:
            state["auto"], _ = _checkpoint.load(out_dir / "autodiff.npz", state["auto"])
        compare = compare or {"max_rel_grad_diff": 0.0, "autodiff_step_losses": []}

    metrics: dict[str, Any] = {}
    t_start = time.perf_counter()
    steps_per_epoch = len(x_tr) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {config.batch_size} exceeds the {len(x_tr)} training images"
        )
    while epoch < config.epochs:
        order = rng.permutation(len(x_tr))
        bar = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", progress)
        t0, epoch_losses = time.perf_counter(), []
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            xb, yb = dp.shard(x_tr[idx]), dp.shard(y_tr[idx])
            if config.compare_autodiff:
                # Rule check at identical params, before this step's update.
                _, g_auto = auto_grads(state["params"], xb, yb)
            params, opt_state, loss, grads = step(state["params"], state["opt_state"], xb, yb)
            state["params"], state["opt_state"] = params, opt_state
            loss = float(loss)
            global_step += 1
            if not math.isfinite(loss):
                bar.close()
                _write_metrics(out_dir, config, history, step_losses, compare, t_start, "diverged")
                raise Diverged(
                    f"loss became {loss} at step {global_step} (epoch {epoch + 1}, batch {b + 1}); "
                    f"stopping. Last good checkpoint: {out_dir / CHECKPOINT}"
                    if (out_dir / CHECKPOINT).exists()
                    else f"loss became {loss} at step {global_step} (epoch {epoch + 1}, "
                    f"batch {b + 1}); stopping (no checkpoint had been written yet)"
                )
            if config.compare_autodiff:
                compare["max_rel_grad_diff"] = max(
                    compare["max_rel_grad_diff"], _max_relative_difference(grads, g_auto)
                )
                a = state["auto"]
                a["params"], a["opt_state"], auto_loss, _ = auto_step(
                    a["params"], a["opt_state"], xb, yb
                )
                compare["autodiff_step_losses"].append(float(auto_loss))
            epoch_losses.append(loss)
            step_losses.append(loss)
            bar.update(loss)
        bar.close()
        seconds = time.perf_counter() - t0
        epoch += 1
        record = {
            "epoch": epoch,
            "loss": float(np.mean(epoch_losses)),
            "train_accuracy": accuracy(predict, state["params"], x_tr, y_tr, dp),
            "test_accuracy": accuracy(predict, state["params"], x_te, y_te, dp),
            "images_per_sec": steps_per_epoch * config.batch_size / seconds,
            "seconds": seconds,
        }
        if config.compare_autodiff:
            record["autodiff_test_accuracy"] = accuracy(
                predict, state["auto"]["params"], x_te, y_te, dp
            )
        history.append(record)
        log(
            f"epoch {epoch}/{config.epochs}  loss {record['loss']:.4f}  "
            f"train acc {record['train_accuracy']:.2%}  test acc {record['test_accuracy']:.2%}  "
            f"{record['images_per_sec']:,.0f} img/s"
        )
        last = epoch == config.epochs
        if last or (config.checkpoint_every and epoch % config.checkpoint_every == 0):
            meta = {
                "config": dataclasses.asdict(config),
                "epoch": epoch,
                "step": global_step,
                "shuffle_rng": rng.bit_generator.state,
                "data_order": order.tolist(),
                "init_key": np.asarray(jax.random.key_data(jax.random.key(config.seed))).tolist(),
                "history": history,
                "step_losses": step_losses,
                "compare": compare,
            }
            if config.compare_autodiff:
                _checkpoint.save(out_dir / "autodiff.npz", state["auto"], meta)
            _checkpoint.save(
                out_dir / CHECKPOINT, {k: state[k] for k in ("params", "opt_state")}, meta
            )
        metrics = _write_metrics(out_dir, config, history, step_losses, compare, t_start, "done")
    metrics["params"] = state["params"]
    return metrics


def _check_resume(config: TrainConfig, meta: dict[str, Any], path: Path) -> None:
    saved = meta["config"]
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}"
        for k in RESUME_KEYS
        if saved.get(k) != getattr(config, k)
    ]
    if diffs:
        raise _checkpoint.CheckpointError(
            f"{path}: mismatched checkpoint, it was written with other settings ("
            + "; ".join(diffs)
            + ")"
        )
    if meta["epoch"] >= config.epochs:
        raise _checkpoint.CheckpointError(
            f"{path}: already trained for {meta['epoch']} epochs; pass --epochs > "
            f"{meta['epoch']} to continue"
        )


def _write_metrics(out_dir, config, history, step_losses, compare, t_start, status):
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        "status": status,
        "config": dataclasses.asdict(config),
        "epochs": len(history),
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "train_accuracy": history[-1]["train_accuracy"] if history else None,
        "history": history,
        "step_losses": step_losses,
        "wall_time_seconds": time.perf_counter() - t_start,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()[: config.devices or None]],
        "jax_version": jax.__version__,
    }
    if compare:
        theirs = compare["autodiff_step_losses"]
        first = min(100, len(theirs))
        rel = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(step_losses, theirs, strict=False)]
        metrics["compare_autodiff"] = {
            "max_rel_grad_diff": compare["max_rel_grad_diff"],
            "max_rel_loss_diff_first_100_steps": max(rel[:first], default=0.0),
            "max_rel_loss_diff": max(rel, default=0.0),
            "autodiff_step_losses": theirs,
        }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_curves(out_dir / "curves.png", metrics)
    return metrics
