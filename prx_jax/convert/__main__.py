"""``python -m prx_jax.convert {import,export} SRC OUT``: strict, streaming weight conversion.

import: SRC is a diffusers ``transformer/`` folder, a pipeline root, a prx_jax weights folder, or a
PRX research checkpoint (``.safetensors`` / ``.index.json``, keys optionally under
``state.model.denoiser.``; pass ``--config``). OUT becomes a prx_jax weights folder (config.json,
prx_jax.json, params/ as an Orbax checkpoint), which the trainer initialises from.
export: SRC as above; OUT becomes a diffusers ``transformer/`` folder that
``PRXTransformer2DModel.from_pretrained`` loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prx_jax.convert.errors import ConversionError
from prx_jax.convert.safetensors_io import SafetensorsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prx_jax.convert", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="diffusers / research checkpoint -> prx_jax weights folder")
    exp = sub.add_parser("export", help="any supported source -> diffusers transformer/ folder")
    for s in (imp, exp):
        s.add_argument("src", type=Path)
        s.add_argument("out", type=Path)
        s.add_argument(
            "--config",
            default=None,
            help="preset name or config.json path (required for research checkpoints)",
        )
        s.add_argument(
            "--prefix",
            default=None,
            help="key prefix of the denoiser inside a research checkpoint "
            "(default: state.model.denoiser. when present)",
        )
    imp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    exp.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"],
        help="dtype of the written tensors (default: the source parameters' dtype)",
    )  # fmt: skip
    exp.add_argument("--max-shard-size", default="10GB", help="shard above this size (10GB)")
    return p


def _source_dtype(src: Path) -> str:
    marker = src / "prx_jax.json"
    return (
        json.loads(marker.read_text()).get("param_dtype", "float32")
        if marker.exists()
        else "float32"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prx_jax.convert.transformer import load_transformer, save_transformer

    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty; choose a new folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.command == "import":
            model = load_transformer(
                args.src, dtype=args.dtype, config=args.config, research_prefix=args.prefix
            )
            save_transformer(model, args.out, format="prx_jax")
        else:
            model = load_transformer(
                args.src, dtype=_source_dtype(args.src), config=args.config,
                research_prefix=args.prefix,
            )  # fmt: skip
            save_transformer(
                model, args.out, format="diffusers", dtype=args.dtype,
                max_shard_size=args.max_shard_size,
            )  # fmt: skip
    except (ConversionError, SafetensorsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from prx_jax.models.prx import count_params

    n = count_params(model)
    dt = time.perf_counter() - t0
    print(f"{args.command}: {args.src} -> {args.out}: {n:,} parameters in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
