"""``jconv train`` end to end: outputs, checkpoints, bit-identical resume, failures."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_data import write_dataset

from jconv import _checkpoint, _cli, _train


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "data", n_train=96, n_test=20, size=8)


def run(args, capsys=None):
    code = _cli.main(["train", "-q", *args])
    out = capsys.readouterr() if capsys else None
    return code, out


def leaves(path):
    with np.load(path) as npz:
        return [npz[k] for k in sorted(npz.files) if k.startswith("leaf_")]


def test_default_digits_run_writes_metrics_and_curves(tmp_path, capsys):
    code, out = run(["--epochs", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, out.err
    assert "epoch 1/2  loss" in out.out and "test acc" in out.out and "img/s" in out.out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "train_accuracy",
        "epochs",
        "history",
        "wall_time_seconds",
        "jax_backend",
    ):
        assert key in metrics
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2 and metrics["status"] == "done"
    assert metrics["test_accuracy"] > 0.5  # two epochs on digits already learn a lot
    assert (tmp_path / "r" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "r" / "checkpoint.npz").exists()


def test_idx_dataset_and_compare_autodiff(tmp_path, idx_dir, capsys):
    out_dir = tmp_path / "cmp"
    code, out = run(
        [
            "--dataset",
            "idx",
            "--data-dir",
            str(idx_dir),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--optimizer",
            "momentum",
            "--lr",
            "0.01",
            "--compare-autodiff",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, out.err
    assert "largest relative gradient difference" in out.out
    c = json.loads((out_dir / "metrics.json").read_text())["compare_autodiff"]
    assert c["max_rel_grad_diff"] < 1e-4
    assert c["max_rel_loss_diff_first_100_steps"] < 1e-5
    assert len(c["autodiff_step_losses"]) == 2 * (96 // 8)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_is_bit_identical(tmp_path, idx_dir, optimizer):
    common = [
        "--dataset",
        "idx",
        "--data-dir",
        str(idx_dir),
        "--batch-size",
        "16",
        "--optimizer",
        optimizer,
        "--lr",
        "0.01",
        "--seed",
        "3",
    ]
    assert run([*common, "--epochs", "3", "--out", str(tmp_path / "full")])[0] == 0
    assert run([*common, "--epochs", "2", "--out", str(tmp_path / "part")])[0] == 0
    # Resume with only --epochs: everything else comes from the checkpoint.
    assert run(["--resume", str(tmp_path / "part"), "--epochs", "3"])[0] == 0
    full, resumed = (
        leaves(tmp_path / "full" / "checkpoint.npz"),
        leaves(tmp_path / "part" / "checkpoint.npz"),
    )
    assert len(full) == len(resumed) >= 8  # 8 param arrays (+ optimizer state)
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: params and optimizer state
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    m_res = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert m_full["step_losses"] == m_res["step_losses"]
    meta = _checkpoint.load_meta(tmp_path / "part" / "checkpoint.npz")
    assert meta["epoch"] == 3 and sorted(meta["data_order"]) == list(range(96))


def test_resume_refuses_missing_truncated_and_mismatched_checkpoints(tmp_path, idx_dir, capsys):
    code, out = run(["--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no checkpoint there" in out.err
    common = ["--dataset", "idx", "--data-dir", str(idx_dir), "--batch-size", "16"]
    assert run([*common, "--epochs", "1", "--out", str(tmp_path / "a")])[0] == 0
    code, out = run([*common, "--epochs", "2", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "already holds a run; use --resume" in out.err
    code, out = run(["--resume", str(tmp_path / "a"), "--epochs", "2", "--lr", "0.5"], capsys)
    assert (
        code == 2
        and "mismatched checkpoint" in out.err
        and "lr: checkpoint 0.05, now 0.5" in out.err
    )
    code, out = run(["--resume", str(tmp_path / "a"), "--epochs", "1"], capsys)
    assert code == 2 and "already trained for 1 epochs" in out.err
    ckpt = tmp_path / "a" / "checkpoint.npz"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    code, out = run(["--resume", str(tmp_path / "a"), "--epochs", "2"], capsys)
    assert code == 2 and "unreadable or truncated checkpoint" in out.err
    # A checkpoint of another model: same settings, different image size.
    ckpt.write_bytes(good)
    other = write_dataset(tmp_path / "other", n_train=96, n_test=20, size=12)
    meta = _checkpoint.load_meta(ckpt)
    with pytest.raises(
        _checkpoint.CheckpointError, match="mismatched checkpoint|written by a different"
    ):
        config = _train.TrainConfig(**{**meta["config"], "epochs": 2, "data_dir": str(idx_dir)})
        arrays = _train.load_data(_train.TrainConfig(dataset="idx", data_dir=str(other)))
        _train.train(
            config, tmp_path / "a", resume=True, arrays=arrays, progress=False, log=lambda s: None
        )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, idx_dir):
    config = _train.TrainConfig(dataset="idx", data_dir=str(idx_dir), epochs=1, batch_size=16)
    arrays = _train.load_data(config)
    _train.train(config, tmp_path, arrays=arrays, progress=False, log=lambda s: None)
    good = (tmp_path / "checkpoint.npz").read_bytes()
    x_tr, y_tr, x_te, y_te = arrays
    poisoned = (np.full_like(x_tr, np.nan), y_tr, x_te, y_te)
    config.epochs = 2
    with pytest.raises(
        _train.Diverged,
        match=r"loss became nan at step 7 \(epoch 2, batch 1\).*Last good checkpoint",
    ):
        _train.train(
            config, tmp_path, resume=True, arrays=poisoned, progress=False, log=lambda s: None
        )
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_divergence_exit_code_from_the_command_line(tmp_path, idx_dir, capsys):
    code, out = run(
        [
            "--dataset",
            "idx",
            "--data-dir",
            str(idx_dir),
            "--lr",
            "1e30",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "boom"),
        ],
        capsys,
    )
    assert code == 3 and "loss became" in out.err and "at step" in out.err


def test_bad_arguments_are_refused(tmp_path, capsys):
    for args, message in [
        (["--dataset", "idx"], "--dataset idx needs --data-dir"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--dataset", "idx", "--data-dir", str(tmp_path)], "neither train-images-idx3-ubyte"),
    ]:
        code, out = run([*args, "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and message in out.err, (args, out.err)


def test_python_dash_m_train(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jconv",
            "train",
            "--epochs",
            "1",
            "-q",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
