"""Images/s of jconv's jitted LeNet train step for 1, 2 and 4 forced host devices.

Each device count runs in its own subprocess (XLA_FLAGS must be set before JAX
starts). Usage:

    python experiments/multidevice_throughput.py [--batch 256] [--steps 30]
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from jconv import _train, models
n, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dp = _train.DataParallel(n)
params = models.lenet_init(jax.random.key(0), (28, 28, 1))
opt = optax.sgd(0.01, momentum=0.9)
step, _, _ = _train.make_functions(opt, models.JCONV_OPS)
state = dp.replicate({"p": params, "o": opt.init(params)})
rng = np.random.default_rng(0)
x = dp.shard(rng.normal(size=(batch, 28, 28, 1)).astype(np.float32))
y = dp.shard(rng.integers(0, 10, batch).astype(np.int32))
p, o = state["p"], state["o"]
for _ in range(3):
    p, o, loss, _ = step(p, o, x, y)
jax.block_until_ready(p)
t0 = time.perf_counter()
for _ in range(steps):
    p, o, loss, _ = step(p, o, x, y)
jax.block_until_ready(p)
dt = time.perf_counter() - t0
print(json.dumps({"devices": n, "images_per_sec": batch * steps / dt,
                  "backend": jax.default_backend(), "loss": float(loss)}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    for n in [int(v) for v in args.devices.split(",")]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(args.batch), str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{n} device(s): {row['images_per_sec']:,.0f} images/s (loss {row['loss']:.4f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "batch": args.batch,
                    "steps": args.steps,
                    "time": time.ctime(),
                    "results": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
