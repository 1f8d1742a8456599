"""Live feedback: metrics.jsonl, TensorBoard, W&B, and an analytic FLOP count for TFLOP/s and MFU.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``step``, ``loss``,
``lr``, ``grad_norm``, ``img_per_s``, ... and, for validation entries, ``val_loss/*`` and
``demo_accuracy``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

# bf16 dense peak TFLOP/s per chip, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
}


def device_peak_tflops(device: jax.Device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return peak
    return None


def forward_flops_per_image(prx_cfg, tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one denoiser forward on one image."""
    D, M, L, T = prx_cfg.hidden_size, prx_cfg.mlp_hidden, tokens, text_tokens
    S = L + T
    per_block = (
        2 * L * D * 3 * D  # image qkv
        + 2 * T * D * 2 * D  # text kv (recomputed in every block)
        + 2 * 2 * L * S * D  # scores and weighted values
        + 2 * L * D * D  # attention output
        + 2 * L * D * M * 3  # gate, up, down
    )
    embed = 2 * L * prx_cfg.patch_dim * (prx_cfg.bottleneck_size or D)
    if prx_cfg.bottleneck_size:
        embed += 2 * L * prx_cfg.bottleneck_size * D
    txt_in = 2 * T * prx_cfg.context_in_dim * D
    final = 2 * L * D * prx_cfg.patch_dim
    return float(prx_cfg.depth * per_block + embed + txt_in + final)


def train_flops_per_image(prx_cfg, tokens: int, text_tokens: int, remat: bool) -> float:
    """Forward + backward (2x forward), + one more forward when blocks are rematerialised."""
    return (4.0 if remat else 3.0) * forward_flops_per_image(prx_cfg, tokens, text_tokens)


class MetricsWriter:
    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb_project: str | None, config):
        self.enabled = jax.process_index() == 0
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print("tensorboardX is missing: no TensorBoard events")
            else:
                self.tb = SummaryWriter(str(run_dir / "tb"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                print("wandb is not installed: W&B logging is off (pip install wandb)")
            else:
                from prx_jax.config import to_dict

                self.wandb = wandb.init(
                    project=wandb_project, dir=str(run_dir), config=to_dict(config)
                )

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def image(self, step: int, tag: str, grid_HxWx3: np.ndarray) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.add_image(tag, grid_HxWx3, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(grid_HxWx3)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v):
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if np.isfinite(v) else str(v)
    return v


def bin_metrics(prefix: str, edges, sums, counts) -> dict:
    """``{prefix/a-b: mean}`` for every non-empty timestep bin."""
    out = {}
    for a, b, s, n in zip(edges[:-1], edges[1:], sums, counts, strict=True):
        if n:
            out[f"{prefix}/{a:g}-{b:g}"] = float(s) / float(n)
    return out


class StepLogger:
    """Per-step bookkeeping of the loop: the previous step's loss is fetched one step late (a
    non-finite loss is caught naming its step, at most one step in flight), full metrics every
    ``train.log_every`` steps, img/s, TFLOP/s per device, MFU, the progress bar."""

    def __init__(self, cfg, writer: MetricsWriter, prx_cfg, towers, first: int, steps: int):
        self.cfg, self.writer, self.prx, self.towers = cfg, writer, prx_cfg, towers
        self.flops: float | None = None
        self.prev: tuple[int, Any] | None = None
        self.t_last, self.n_since, self.skipped = time.perf_counter(), 0, 0
        self.bar = None
        if cfg.logging.progress and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(
                total=steps, initial=first, desc="train", unit="step", dynamic_ncols=True
            )

    def _flops(self, batch) -> float:
        H, W = batch["image"].shape[-2:]
        p = self.prx.patch_size * self.towers.spatial_factor
        tokens = (H // p) * (W // p)
        remat = self.cfg.model.remat
        return train_flops_per_image(self.prx, tokens, self.towers.tokenizer.max_length, remat)

    def after_step(self, step: int, m: dict, batch) -> dict | None:
        if self.flops is None:
            self.flops = self._flops(batch)
        self.n_since += 1
        row = self.flush()  # the previous step's metrics: it has finished by now
        self.prev = (step, m)
        if self.bar is not None:
            self.bar.update(1)
        return row

    def check_finite(self, step: int, m: dict) -> None:
        finite = bool(jax.device_get(m["finite"]))
        if not finite:
            if self.cfg.train.on_nonfinite == "skip":
                return
            loss = float(jax.device_get(m["loss"]))
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}; the last checkpoint is untouched. "
                "Lower optim.lr, check the data, or set train.on_nonfinite=skip."
            )

    def flush(self) -> dict | None:
        if self.prev is None:
            return None
        step, m = self.prev
        self.prev = None
        self.check_finite(step, m)
        if not bool(jax.device_get(m["finite"])):
            self.skipped += 1
        if step % self.cfg.train.log_every:
            return None
        m = jax.device_get(m)
        dt = max(time.perf_counter() - self.t_last, 1e-9)
        n = max(self.n_since - 1, 1)  # steps finished since the last log (one is in flight)
        img_per_s = n * self.cfg.data.global_batch_size / dt
        tflops = (self.flops or 0.0) * img_per_s / jax.device_count() / 1e12
        row = {
            "loss": float(m["loss"]),
            "lr": float(m["lr"]),
            "grad_norm": float(m["grad_norm"]),
            "img_per_s": img_per_s,
            "tflops_per_device": tflops,
            "skipped_steps": self.skipped,
        }
        peak = device_peak_tflops(jax.devices()[0])
        if peak:
            row["mfu"] = tflops / peak
        edges = self.cfg.objective.loss_bins
        row.update(bin_metrics("loss_bin", edges, m["bin_loss_sum"], m["bin_count"]))
        self.writer.write(step, row)
        self.t_last, self.n_since = time.perf_counter(), 1
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.4f}", img_s=f"{img_per_s:.1f}", tflops=f"{tflops:.3f}"
            )
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
