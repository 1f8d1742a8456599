"""``python -m prx_jax.sample --model RUN_DIR|CHECKPOINT|DIFFUSERS_DIR --prompt "..." --out DIR``.

Generates one PNG per prompt (generation parameters in its text chunks) and a grid, with the whole
denoising loop (classifier-free guidance included) in one jitted function. Run folders use their
EMA weights unless ``--no-ema``. ``--latents FILE.npy`` ([N, C, h, w], as diffusers' ``latents=``
takes it) starts from given noise, so results can be compared with diffusers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 512x768 (WxH)") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prx_jax.sample", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="run folder, checkpoint step folder or pipeline")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", type=Path, help="one prompt per line")
    p.add_argument("--negative-prompt", default="", help="the unconditional prompt (CFG)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (> 1 enables CFG)")
    p.add_argument("--size", type=_size, default=None, help="WxH (default: the model's)")
    p.add_argument("--no-binning", action="store_true", help="do not snap to aspect-ratio bins")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latents", type=Path, help=".npy initial noise [N, C, h, w]")
    p.add_argument("--batch", type=int, default=4, help="images denoised together")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--no-ema", action="store_true", help="run folders: the raw parameters")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="activation dtype (parameters stay fp32)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [ln.strip() for ln in args.prompts_file.read_text().splitlines() if ln.strip()]
    if not prompts:
        print("error: give --prompt or --prompts-file", file=sys.stderr)
        return 2
    prompts = [p for p in prompts for _ in range(args.images_per_prompt)]
    from prx_jax.xla_flags import apply_default_flags

    apply_default_flags()
    import numpy as np

    from prx_jax.publish.sampling import SampleSpec, load_model, sample_to_dir

    model = load_model(args.model, "params" if args.no_ema else "ema", args.dtype)
    w, h = args.size or (None, None)
    spec = SampleSpec(
        steps=args.steps, guidance_scale=args.cfg, height=h, width=w, seed=args.seed,
        negative_prompt=args.negative_prompt, binning=not args.no_binning,
    )  # fmt: skip
    latents = None if args.latents is None else np.load(args.latents)
    t0 = time.perf_counter()
    paths = sample_to_dir(model, prompts, spec, args.out, latents, args.batch)
    dt = time.perf_counter() - t0
    print(f"{len(paths)} images -> {args.out} ({dt:.1f} s, compile included); grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
