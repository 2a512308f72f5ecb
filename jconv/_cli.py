"""The ``jconv`` command line (also ``python -m jconv``)."""

from __future__ import annotations

import argparse
import sys


def _verify(args: argparse.Namespace) -> int:
    import jax

    from . import _verify

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    results, table = _verify.run(args.configs, args.seed, args.dtype, progress=not args.quiet)
    print(table)
    failures = [(case, errors) for case, errors, ok in results if not ok]
    for case, errors in failures:
        worst = ", ".join(f"{k}={v:.2e}" for k, v in errors.items())
        print(f"FAILED: {case.pasteable()}  ({worst})")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jconv", description="Convolutions whose backward pass is the hand-derived rule."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify", help="check jconv's rules against jax.grad of lax on random configurations"
    )
    verify.add_argument("--configs", type=int, default=50, help="number of random configurations")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
