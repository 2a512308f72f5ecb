"""Atomic, validated training checkpoints (one ``.npz`` file).

A checkpoint holds the leaves of an arbitrary pytree of arrays (params and
optimizer state) plus a JSON metadata record (config, epoch, RNG state, data
order, history). The pytree *structure* is not pickled: loading takes a template
built the same way as the saved tree and checks that every leaf matches it in
number, shape and dtype, so a checkpoint from another model or optimizer is
refused with a clear message instead of being half-loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "jconv-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, truncated or for another run."""


def save(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> None:
    """Writes ``tree``'s leaves and ``meta`` atomically: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    arrays = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    record = json.dumps({"format": FORMAT, "num_leaves": len(leaves), **meta})
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.frombuffer(record.encode(), np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata record of a checkpoint, validated."""
    with _open(path) as npz:
        return _meta(npz, Path(path))


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restores a tree shaped like ``template`` and returns ``(tree, meta)``."""
    path = Path(path)
    with _open(path) as npz:
        meta = _meta(npz, path)
        expected = jax.tree.leaves(template)
        if meta["num_leaves"] != len(expected):
            raise CheckpointError(
                f"{path}: holds {meta['num_leaves']} arrays but this run's model and "
                f"optimizer have {len(expected)}: it was written by a different configuration"
            )
        leaves = []
        for i, want in enumerate(expected):
            try:
                got = npz[f"leaf_{i:05d}"]
            except (KeyError, zipfile.BadZipFile, OSError, ValueError) as e:
                raise CheckpointError(f"{path}: array {i} is missing or corrupt ({e})") from None
            if got.shape != np.shape(want) or got.dtype != np.asarray(want).dtype:
                raise CheckpointError(
                    f"{path}: array {i} is {got.dtype}{list(got.shape)} but this run expects "
                    f"{np.asarray(want).dtype}{list(np.shape(want))}: mismatched checkpoint"
                )
            leaves.append(got)
    return jax.tree.unflatten(jax.tree.structure(template), leaves), meta


def _open(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from None


def _meta(npz, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(npz["__meta__"].tobytes().decode())
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: missing or corrupt metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
    return meta
