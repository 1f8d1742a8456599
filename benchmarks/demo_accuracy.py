"""Demo caption accuracy of a run's EMA samples, per attribute, on N held-out captions.

    python benchmarks/demo_accuracy.py runs/demo [--captions 128] [--steps 20] [--cfg 3.0]
        [--shift 3.0] [--weights ema|params]

RUN is a demo run folder (its newest checkpoint) or one ``checkpoints/<step>`` folder. The
captions are the first N of the held-out validation stream (the trainer's ``validation.
demo_prompts`` are its first ones), sampled as validation samples them (one jitted Euler loop with
CFG, the run's noise seed). Prints the accuracy and, per attribute, how many stated attributes are
wrong; appends one JSON line to ``benchmarks/results/demo_accuracy.jsonl``.
"""

from __future__ import annotations

import argparse
import collections

import jax.numpy as jnp
import numpy as np
from common import append_result, environment

from prx_jax.data.scorer import score
from prx_jax.parallel.rules import make_mesh
from prx_jax.train.params_restore import load_run
from prx_jax.train.towers import build_towers, decode
from prx_jax.train.validate import ValidationSpec, default_prompts, make_sampler, to_uint8


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a demo run folder, or one of its checkpoints/<step> folders")
    p.add_argument("--captions", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's)")
    p.add_argument("--cfg", type=float, default=None, help="guidance (default: the run's)")
    p.add_argument("--shift", type=float, default=None, help="sampling shift (default: run's)")
    p.add_argument("--weights", choices=("ema", "params"), default="ema")
    args = p.parse_args(argv)

    w = load_run(args.run, args.weights)
    cfg, v = w.cfg, w.cfg.validation
    if cfg.data.source != "demo":
        raise SystemExit(f"{args.run} is not a demo run (data.source={cfg.data.source!r})")
    towers = build_towers(cfg, make_mesh(1, 1, 1))
    frozen = towers.frozen()
    prompts = default_prompts(args.captions)
    H = W = cfg.data.resolution
    spec = ValidationSpec(
        prompts=prompts, height=H, width=W,
        num_steps=args.steps or v.num_steps,
        guidance_scale=v.guidance_scale if args.cfg is None else args.cfg,
        shift=v.sample_shift if args.shift is None else args.shift,
        seed=v.seed, prediction=cfg.objective.prediction,
        noise_scale=cfg.objective.noise_scale, is_demo=True,
    )  # fmt: skip
    sampler = make_sampler(w.graphdef, spec, (w.prx.in_channels, H, W))
    txt, mask = towers.encode(list(prompts))
    latents = sampler(
        w.params, txt.astype(jnp.float32), mask, frozen["null_txt"], frozen["null_mask"]
    )
    images = to_uint8(decode(towers, latents))
    results = [score(im, c) for im, c in zip(images, prompts, strict=True)]
    wrong, stated = collections.Counter(), collections.Counter()
    for r in results:
        for check, ok in r.checks.items():
            attr = check.split(".")[-1]  # object0.shape -> shape
            stated[attr] += 1
            wrong[attr] += not ok
    accuracy = float(np.mean([r.accuracy for r in results]))
    row = {
        **environment(),
        "run": str(w.checkpoint),
        "step": w.step,
        "weights": w.which,
        "captions": args.captions,
        "num_steps": spec.num_steps,
        "guidance_scale": spec.guidance_scale,
        "sample_shift": spec.shift,
        "accuracy": accuracy,
        "wrong": dict(wrong),
        "stated": dict(stated),
    }
    append_result("demo_accuracy", row)
    per_attr = ", ".join(f"{a} {wrong[a]}/{stated[a]}" for a in stated)
    print(
        f"{w.checkpoint} ({w.which}, step {w.step}): caption accuracy {accuracy:.1%} on "
        f"{args.captions} held-out captions; wrong: {per_attr}"
    )


if __name__ == "__main__":
    main()
