"""``python -m prx_jax.export RUN_DIR OUT``: a run as a complete diffusers pipeline with a card.

RUN_DIR is a run folder (newest checkpoint) or a checkpoint step folder. Latent runs become a
PRXPipeline folder, pixel runs a PRXPixelPipeline folder; frozen components come from
``--base-pipeline`` (default: the run's ``text.path`` / ``init_from``) or, for the demo text tower,
from JAX. ``--push-to-hub REPO_ID`` then uploads OUT (the token comes from the usual Hugging Face
places: ``HF_TOKEN`` or ``hf auth login``; it is never printed or written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m prx_jax.export", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder or checkpoint step folder")
    p.add_argument("out", type=Path, help="the pipeline folder to write (new or empty)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="export the EMA weights (default) or the raw parameters")  # fmt: skip
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--base-pipeline", type=Path, help="folder with the frozen components")
    p.add_argument("--samples", type=int, default=4, help="sample-grid images for the card")
    p.add_argument("--sample-steps", type=int, help="steps for the grid (default: validation's)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--base-model", help="Hub id of the base model, for the card")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prx_jax.publish.hub import HubError, push_folder
    from prx_jax.publish.pipeline_export import ExportOptions, export_pipeline

    options = ExportOptions(
        ema=args.ema, dtype=args.dtype,
        base_pipeline=None if args.base_pipeline is None else str(args.base_pipeline),
        samples=args.samples, sample_steps=args.sample_steps, repo_id=args.push_to_hub,
        license=args.license, base_model=args.base_model,
    )  # fmt: skip
    try:
        out = export_pipeline(args.run, args.out, options)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run} -> {out}")
    if args.push_to_hub:
        try:
            url = push_folder(out, args.push_to_hub, private=args.private)
        except HubError as e:
            print(f"error: {e}\nthe local export is intact at {out}", file=sys.stderr)
            return 1
        print(f"pushed {out} -> {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
