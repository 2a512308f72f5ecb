"""The ``jconv`` command line (also ``python -m jconv``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._spec import LOWERINGS


def _verify(args: argparse.Namespace) -> int:
    import jax

    from . import _verify

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    layers = tuple(args.layers.split(","))
    unknown = sorted(set(layers) - set(_verify.LAYERS))
    if unknown:
        print(f"error: unknown --layers {unknown}; choose from {_verify.LAYERS}", file=sys.stderr)
        return 2
    results, table = _verify.run(
        args.configs, args.seed, args.dtype, progress=not args.quiet, layers=layers
    )
    print(table)
    failures = [(case, errors) for case, errors, ok in results if not ok]
    for case, errors in failures:
        worst = ", ".join(f"{k}={v:.2e}" for k, v in errors.items())
        print(f"FAILED: {case!r}  ({worst})")
    return 1 if failures else 0


def _default_out(dataset: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{stamp}-{dataset}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"{stamp}-{dataset}-{n}"
    return out


def _train(args: argparse.Namespace) -> int:
    from . import _checkpoint, _train, data

    given = {k: getattr(args, k) for k in _TRAIN_KEYS if getattr(args, k) is not None}
    try:
        if args.resume:
            out = Path(args.resume)
            if args.out and Path(args.out) != out:
                raise ValueError("--resume DIR continues in DIR; do not also pass another --out")
            saved = _checkpoint.load_meta(out / _train.CHECKPOINT)["config"]
            config = _train.TrainConfig(**{**saved, **given})
        else:
            config = _train.TrainConfig(**given)
            out = Path(args.out) if args.out else _default_out(config.dataset)
            if (out / _train.CHECKPOINT).exists():
                raise ValueError(
                    f"{out} already holds a run; use --resume {out} to continue it, or "
                    f"another --out"
                )
        config.validate()
        import jax

        n_dev = config.devices or len(jax.local_devices())
        print(
            f"jconv train: {config.dataset}, {config.epochs} epochs, {config.optimizer} "
            f"lr={config.lr}, batch {config.batch_size}, seed {config.seed} -> {out}  "
            f"[{jax.default_backend()} x {n_dev}]"
        )
        metrics = _train.train(config, out, resume=bool(args.resume), progress=not args.quiet)
    except (ValueError, _checkpoint.CheckpointError, data.IdxFormatError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _train.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(
        f"test accuracy {metrics['test_accuracy']:.2%} after {metrics['epochs']} epochs "
        f"in {metrics['wall_time_seconds']:.1f}s; wrote {out}/metrics.json, {out}/curves.png"
    )
    if "compare_autodiff" in metrics:
        c = metrics["compare_autodiff"]
        print(
            f"compare-autodiff: largest relative gradient difference {c['max_rel_grad_diff']:.2e}; "
            f"loss curves differ by at most {c['max_rel_loss_diff_first_100_steps']:.2e} "
            f"(relative) over the first 100 steps, {c['max_rel_loss_diff']:.2e} overall"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import _bench

    names = args.shapes.split(",") if args.shapes else None
    known = {s.name for s in _bench.SUITE}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        print(f"error: unknown shapes {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    report = _bench.run(
        names,
        repeats=args.repeats,
        torch=not args.no_torch,
        lowering=args.lowering,
        chained=args.chained,
    )
    out = Path(args.out)
    _bench.write(report, out)
    print(_bench.markdown(report))
    print(f"wrote {out}/bench.json, {out}/bench.md, {out}/bench.png")
    return 0


_TRAIN_KEYS = (
    "dataset",
    "data_dir",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "seed",
    "checkpoint_every",
    "compare_autodiff",
    "devices",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jconv", description="Convolutions whose backward pass is the hand-derived rule."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify", help="check jconv's rules against jax.grad of lax on random configurations"
    )
    verify.add_argument("--configs", type=int, default=50, help="random configurations per layer")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    verify.add_argument(
        "--layers",
        default="conv",
        help="comma-separated layers to check: conv, dense, max_pool, avg_pool (default conv)",
    )
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=_verify)

    train = sub.add_parser(
        "train",
        help="train a LeNet-style CNN with hand-derived gradients (default: 8x8 digits)",
        description="Train the LeNet-style CNN of jconv.models with optax. Unset options "
        "take their defaults, or the checkpoint's values with --resume.",
    )
    train.add_argument(
        "--dataset",
        choices=["digits", "idx"],
        default=None,
        help="digits (scikit-learn, default) or idx (MNIST-format files)",
    )
    train.add_argument("--data-dir", default=None, help="folder with the IDX files")
    train.add_argument("--epochs", type=int, default=None, help="total epochs (default 25)")
    train.add_argument("--batch-size", type=int, default=None, help="default 32")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default 0.05)")
    train.add_argument(
        "--optimizer", choices=["sgd", "momentum", "adam"], default=None, help="default sgd"
    )
    train.add_argument("--seed", type=int, default=None, help="default 0")
    train.add_argument("--out", default=None, help="run folder (default: a new one in runs/)")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="epochs between checkpoints (default 1; 0: only at the end)",
    )
    train.add_argument(
        "--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint"
    )
    train.add_argument(
        "--compare-autodiff",
        action="store_const",
        const=True,
        default=None,
        help="also train the same network with plain autodiff and compare",
    )
    train.add_argument(
        "--devices",
        type=int,
        default=None,
        help="data-parallel over this many local devices (default: all); the batch is split",
    )
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)

    bench = sub.add_parser(
        "bench", help="time jconv's fwd+bwd against autodiff of lax (and PyTorch) per shape"
    )
    bench.add_argument("--shapes", default=None, help="comma-separated subset of the suite")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    bench.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    bench.add_argument("--out", default="bench-results", help="folder for bench.json/.md/.png")
    bench.add_argument(
        "--lowering",
        choices=LOWERINGS,
        default="auto",
        help="jconv's lowering (default auto; the tiles of winograd are opt-in)",
    )
    bench.add_argument(
        "--chained",
        action="store_true",
        help="loss sum(z * ct) + sum(z**2) / 2: the backward waits for the forward, as in "
        "a network (default: sum(z * ct), whose three passes are independent)",
    )
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
