"""The PRX train step in PyTorch (diffusers' PRXTransformer2DModel, eager and torch.compile) and in
prx_jax, timed in one process on one machine, alternating the implementations in rounds.

    python benchmarks/compare_torch.py [--config bench|PRESET] [--resolution R] [--batch B]

Same model config, batch, loss (MSE to a fixed target), optimizer (AdamW lr 1e-4, wd 0.01) and
precision (fp32 on CPU; bf16 autocast / bf16 compute with fp32 master weights on GPU). Every step is
synchronised (``block_until_ready`` / CPU torch is synchronous), warm-up steps are dropped, medians
are reported. The last line is ``ratio_vs_torch_compile=X.XX ratio_vs_torch_eager=Y.YY``.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
    BENCH,
    BENCH_BATCH,
    BENCH_LATENT,
    BENCH_TEXT,
    append_result,
    environment,
    median,
    time_calls,
)
from flax import nnx

from prx_jax.models.presets import get_preset
from prx_jax.models.prx import PRXTransformer

LR, WD = 1e-4, 0.01


def inputs(cfg, batch: int, size: int, text: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cfg.in_channels, size, size)).astype(np.float32)
    t = rng.uniform(0.05, 0.95, (batch,)).astype(np.float32)
    txt = rng.standard_normal((batch, text, cfg.context_in_dim)).astype(np.float32)
    mask = np.ones((batch, text), bool)
    mask[:, text // 2 :] = rng.uniform(size=(batch, text - text // 2)) < 0.5
    target = rng.standard_normal(x.shape).astype(np.float32)
    return x, t, txt, mask, target


def jax_step_fn(cfg, bf16: bool, attention_impl: str = "xla", scan: bool = False):
    model = PRXTransformer(
        cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16 if bf16 else None,
        attention_impl=attention_impl, scan_blocks=scan,
    )  # fmt: skip
    graphdef, params = nnx.split(model, nnx.Param)
    params = params.to_pure_dict()
    tx = optax.adamw(LR, weight_decay=WD)
    opt_state = tx.init(params)

    def loss_fn(p, x, t, txt, mask, target):
        out = nnx.merge(graphdef, p)(x, t, txt, mask)
        return jnp.mean(jnp.square(out.astype(jnp.float32) - target))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, x, t, txt, mask, target):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t, txt, mask, target)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    return step, params, opt_state


def torch_step_fn(cfg, compiled: bool, device: str):
    import torch
    from diffusers import PRXTransformer2DModel

    d = cfg.to_diffusers()
    d.pop("_class_name")
    torch.manual_seed(0)
    model = PRXTransformer2DModel(**d).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, foreach=True)
    fwd = torch.compile(model) if compiled else model
    autocast = device == "cuda"

    def step(x, t, txt, mask, target):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = fwd(x, t, txt, attention_mask=mask, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="bench", help="bench or a prx_jax preset name")
    p.add_argument("--resolution", type=int, default=None, help="input side (latent/pixels)")
    p.add_argument("--batch", type=int, default=BENCH_BATCH)
    p.add_argument("--text-tokens", type=int, default=BENCH_TEXT)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--steps", type=int, default=4, help="timed steps per implementation per round")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    p.add_argument("--attention", default="xla", help="prx_jax attention implementation")
    p.add_argument("--scan", action="store_true", help="prx_jax with scanned blocks")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = p.parse_args(argv)

    import torch

    cfg = BENCH if args.config == "bench" else get_preset(args.config)
    size = args.resolution or (BENCH_LATENT if args.config == "bench" else 64)
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    if not on_gpu:
        torch.set_num_threads(args.threads)
    host = inputs(cfg, args.batch, size, args.text_tokens)

    j_step, params, opt_state = jax_step_fn(cfg, on_gpu, args.attention, args.scan)
    j_in = [jnp.asarray(a) for a in host]
    j_state = [params, opt_state]

    def run_jax():
        j_state[0], j_state[1], loss = j_step(j_state[0], j_state[1], *j_in)
        loss.block_until_ready()

    t_in = [torch.from_numpy(a).to(device) for a in host]
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    impls = {"prx_jax": run_jax}
    for name, compiled in (("torch_eager", False), ("torch_compile", True)):
        if compiled and args.no_compile:
            continue
        fn = torch_step_fn(cfg, compiled, device)
        impls[name] = lambda fn=fn: (fn(*t_in), sync())
    times = {k: [] for k in impls}
    compile_s = {}
    for name, fn in impls.items():  # warm-up (compilation) outside the timed rounds
        compile_s[name] = sum(time_calls(fn, 1, warmup=0))
        time_calls(fn, 1, warmup=0)
        print(f"{name}: first call {compile_s[name]:.1f} s", flush=True)
    for r in range(args.rounds):
        order = list(impls) if r % 2 == 0 else list(impls)[::-1]
        for name in order:
            times[name] += time_calls(impls[name], args.steps, warmup=1)
    img_s = {k: args.batch / median(v) for k, v in times.items()}
    for k, v in img_s.items():
        print(f"{k:<14} {v:8.2f} img/s  (median step {median(times[k]) * 1e3:.1f} ms, "
              f"first call {compile_s[k]:.1f} s)")  # fmt: skip
    ratios = {f"ratio_vs_{k}": img_s["prx_jax"] / img_s[k] for k in img_s if k != "prx_jax"}
    append_result(
        "compare_torch",
        {
            **environment(),
            "config": args.config,
            "model": cfg.to_diffusers(),
            "batch": args.batch,
            "input_size": size,
            "text_tokens": args.text_tokens,
            "precision": "bf16" if on_gpu else "fp32",
            "torch_threads": None if on_gpu else args.threads,
            "attention": args.attention,
            "scan_blocks": args.scan,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "img_per_s": img_s,
            "median_step_s": {k: median(v) for k, v in times.items()},
            "first_call_s": compile_s,
            **ratios,
        },
    )
    print(" ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
