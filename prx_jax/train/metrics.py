"""Live feedback: metrics.jsonl, TensorBoard, W&B, and an analytic FLOP count for TFLOP/s and MFU.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``step``, ``loss``,
``lr``, ``grad_norm``, ``img_per_s``, ... and, for validation entries, ``val_loss/*`` and
``demo_accuracy``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
