"""The trainer as separate processes: SIGTERM and kill -9 mid-run, restore onto another mesh,
and two processes with gloo collectives against one. Every subprocess is killed if it hangs."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.e2e.test_checkpoint import assert_trees_equal, saved_state
from tests.e2e.train_fixtures import STABLE, TINY

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _train_cmd(run_dir, *overrides):
    return [sys.executable, "-m", "prx_jax.train", *TINY, f"run_dir={run_dir}", *overrides]


def _run(cmd, env, timeout=240):
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def _steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _wait_for(proc, cond, timeout=240):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early:\n{proc.stdout.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.05)


def test_sigterm_then_kill9_resume_equals_an_uninterrupted_run(tmp_path):
    args = ("mesh.fsdp=1", "train.steps=40", "checkpoint.every=4", "checkpoint.keep=20")
    env = _env(1)
    _run(_train_cmd(tmp_path / "straight", *args), env)

    run = tmp_path / "interrupted"
    cmd = _train_cmd(run, *args)
    popen = dict(env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p = subprocess.Popen(cmd, **popen)
    _wait_for(p, lambda: bool(_steps(run)))
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-2000:]
    assert "SIGTERM: saved step" in out
    stopped = _steps(run)[-1]
    assert stopped < 40

    p = subprocess.Popen(cmd, **popen)
    _wait_for(p, lambda: _steps(run)[-1] > stopped + 4)
    p.kill()  # kill -9 at an arbitrary moment, possibly mid-save
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL

    _run(cmd, env)
    assert_trees_equal(saved_state(tmp_path / "straight", 40), saved_state(run, 40))


def test_restore_onto_another_mesh_and_device_count(tmp_path):
    run = tmp_path / "run"
    _run(_train_cmd(run, "mesh.fsdp=8", "train.steps=4"), _env(8))
    want = saved_state(run, 4)["params"]
    out = tmp_path / "restored.npz"
    cmd = [sys.executable, "-m", "tests.e2e.dump_restored", str(out), str(run)]
    p = _run([*cmd, "mesh.data=2", "mesh.fsdp=2"], _env(4))
    assert "devices=4 step=4 spec=P('fsdp', None)" in p.stdout
    got = {k.replace("'", ""): v for k, v in np.load(out).items()}
    flat = {
        jax.tree_util.keystr(k).replace("'", ""): v
        for k, v in jax.tree_util.tree_leaves_with_path(want)
    }
    assert sorted(got) == sorted(flat)
    for k in flat:
        np.testing.assert_array_equal(got[k], flat[k])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    args = ("mesh.fsdp=-1", "train.steps=6", "checkpoint.every=6", "train.log_every=3", STABLE)
    _run(_train_cmd(tmp_path / "one", *args), _env(4))
    port = _free_port()
    procs = [
        subprocess.Popen(
            ["timeout", "-k", "5", "240", *_train_cmd(tmp_path / "two", *args)],
            env=_env(
                2,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=2,
                JAX_PROCESS_ID=i,
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    one, two = saved_state(tmp_path / "one", 6), saved_state(tmp_path / "two", 6)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    # only process 0 writes logs
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count('"loss"') == 2
