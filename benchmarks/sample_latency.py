"""28-step classifier-free-guidance sampling latency: prx_jax against diffusers' PRXPipeline.

    python benchmarks/sample_latency.py [--config bench|PRESET] [--latent 32] [--steps 28]

The same randomly initialised denoiser (the bench config by default) in both; the pipeline is fed
precomputed prompt embeddings and returns latents (no text encoder, no VAE: the denoising loop is
what is timed). prx_jax runs the whole Euler loop as one jitted ``fori_loop``. Medians over
``--repeats`` after a warm-up; one JSON line to ``benchmarks/results/sample_latency.jsonl``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    BENCH,
    BENCH_LATENT,
    BENCH_TEXT,
    append_result,
    environment,
    median,
    time_calls,
)
from flax import nnx

from prx_jax.convert.transformer import build_from_tensors
from prx_jax.diffusion.sampler import euler_sample
from prx_jax.diffusion.schedules import flow_match_sigmas, model_times
from prx_jax.models.presets import get_preset


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="bench")
    p.add_argument("--latent", type=int, default=BENCH_LATENT, help="latent side")
    p.add_argument("--text-tokens", type=int, default=BENCH_TEXT)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPipeline
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    cfg = BENCH if args.config == "bench" else get_preset(args.config)
    d = cfg.to_diffusers()
    d.pop("_class_name")
    from diffusers import PRXTransformer2DModel

    torch.manual_seed(0)
    tmodel = PRXTransformer2DModel(**d).eval()
    with torch.no_grad():  # non-zero modulation: every block does work
        for prm in tmodel.parameters():
            prm.add_(0.01 * torch.randn_like(prm))
    import tempfile
    from pathlib import Path

    from prx_jax.convert.safetensors_io import read_index

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in tmodel.state_dict().items()}, str(f))
        jmodel = build_from_tensors(cfg, read_index(f), source=str(f))
    pipe = PRXPipeline(
        transformer=tmodel, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=None, tokenizer=None, vae=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    T, E = args.text_tokens, cfg.context_in_dim
    emb = rng.standard_normal((1, T, E)).astype(np.float32)
    neg = np.zeros((1, T, E), np.float32)
    mask = np.ones((1, T), bool)
    x0 = rng.standard_normal((1, cfg.in_channels, args.latent, args.latent)).astype(np.float32)
    size = args.latent * pipe.vae_scale_factor

    def run_torch():
        with torch.no_grad():
            return pipe(
                prompt_embeds=torch.from_numpy(emb), negative_prompt_embeds=torch.from_numpy(neg),
                prompt_attention_mask=torch.from_numpy(mask),
                negative_prompt_attention_mask=torch.from_numpy(mask),
                latents=torch.from_numpy(x0), height=size, width=size,
                num_inference_steps=args.steps, guidance_scale=args.guidance,
                output_type="latent", use_resolution_binning=False,
            ).images  # fmt: skip

    sigmas = flow_match_sigmas(args.steps, 3.0)
    times = model_times(sigmas)
    graphdef, state = nnx.split(jmodel)

    @jax.jit
    def sample(state, x, emb, mask, neg):
        model = nnx.merge(graphdef, state)
        return euler_sample(
            model, x, sigmas, cond=(emb, mask), uncond=(neg, mask),
            guidance_scale=args.guidance, prediction="velocity", times=times,
        )  # fmt: skip

    j_in = [jnp.asarray(a) for a in (x0, emb, mask, neg)]
    run_jax = lambda: sample(state, *j_in).block_until_ready()  # noqa: E731
    out_j = np.asarray(run_jax())
    out_t = np.asarray(run_torch()).reshape(out_j.shape)
    diff = float(np.abs(out_j - out_t).max() / (np.abs(out_t).max() + 1e-12))
    t_jax, t_torch = [], []
    for r in range(args.repeats):  # alternate to share the host's noise
        for name in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
            fn = run_jax if name == "jax" else run_torch
            (t_jax if name == "jax" else t_torch).extend(time_calls(fn, 1, warmup=0))
    row = {
        **environment(),
        "config": args.config,
        "latent": args.latent,
        "text_tokens": T,
        "steps": args.steps,
        "guidance": args.guidance,
        "prx_jax_s": median(t_jax),
        "diffusers_s": median(t_torch),
        "speedup": median(t_torch) / median(t_jax),
        "max_rel_diff_vs_diffusers": diff,
    }
    append_result("sample_latency", row)
    print(
        f"prx_jax {row['prx_jax_s']:.2f} s, diffusers PRXPipeline {row['diffusers_s']:.2f} s "
        f"({args.steps} CFG steps, {args.latent}x{args.latent} latents): speedup "
        f"{row['speedup']:.2f}x (outputs differ by {diff:.1e} relative)"
    )


if __name__ == "__main__":
    main()
