"""``python -m prx_jax.train [--config configs/X.yaml] [key.sub=value ...]``.

With no arguments it trains the demo preset (``configs/demo.yaml``, installed with the package as
``prx_jax/configs/demo.yaml``): a tiny pixel-space PRX on the procedural demo dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prx_jax.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=None, help="YAML preset (default: demo)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="compile the train step on fake CPU devices and print per-device memory and FLOPs",
    )
    p.add_argument("--devices", type=int, default=8, help="--dry-run: fake devices (default 8)")
    p.add_argument(
        "--device-memory-gb", type=float, default=80.0, help="--dry-run: memory per device"
    )
    args = p.parse_args(argv)
    from prx_jax.config import ConfigError, load_config
    from prx_jax.xla_flags import apply_cpu_devices, apply_default_flags

    apply_default_flags()

    path = args.config or (DEMO if DEMO.exists() else None)
    try:
        cfg = load_config(path, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.dry_run:
        apply_cpu_devices(cfg.mesh.cpu_devices)  # before JAX starts its CPU backend
    if args.dry_run:
        from prx_jax.train import aot

        aot.use_fake_cpu_devices(args.devices)
        print(aot.format_report(aot.dry_run(cfg, device_memory_gb=args.device_memory_gb)))
        return 0
    from prx_jax.train.loop import train

    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
