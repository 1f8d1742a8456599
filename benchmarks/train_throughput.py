"""prx_jax train-step throughput: img/s, TFLOP/s and MFU per device, compile time, peak memory.

    python benchmarks/train_throughput.py --preset P --resolution R --batch B [--steps N]
        [--mesh DATA,FSDP,TENSOR] [--dtype bfloat16] [--remat POLICY] [--scan] [--attention auto]

The real train step (``prx_jax.train.step.train_step``: timestep sampling, x-pred/velocity loss,
optimizer, EMA) on synthetic batches already on device (precomputed text embeddings, pixels or
latents: the frozen towers are not timed), after a warm-up; the median step time over N steps.
MFU is against the device's bf16 peak (``prx_jax.train.metrics.PEAK_TFLOPS``); on CPU against a
matmul peak measured in the same run, in the compute dtype. Appends one JSON line to
``benchmarks/results/train_throughput.jsonl``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import append_result, environment, matmul_peak_tflops, median, time_calls

from prx_jax.config import load_config
from prx_jax.parallel.rules import make_mesh
from prx_jax.train.aot import step_parts
from prx_jax.train.metrics import device_peak_tflops, forward_flops_per_image
from prx_jax.train.state import init_train_state


def _random(abstract, seed: int):
    rng = np.random.default_rng(seed)

    def one(a):
        if a.dtype == jnp.bool_:
            x = np.ones(a.shape, bool)
        else:
            x = rng.standard_normal(a.shape).astype(np.float32)
        return jax.device_put(jnp.asarray(x, a.dtype), a.sharding)

    return jax.tree.map(one, abstract)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="prx-pixel-small")
    p.add_argument("--resolution", type=int, default=256, help="pixels (latents for vae runs)")
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor")
    p.add_argument("--dtype", default=None, help="compute dtype (default bf16, fp32 on CPU)")
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--remat", default="none", help="none | full | dots_saveable | ...")
    p.add_argument("--scan", action="store_true", help="scan over stacked blocks")
    p.add_argument("--attention", default="auto")
    p.add_argument("--optim", default="adamw")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    args = p.parse_args(argv)

    cpu = jax.default_backend() == "cpu"
    dtype = args.dtype or ("float32" if cpu else "bfloat16")
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    over = [
        f"model.preset={args.preset}", f"model.compute_dtype={dtype}",
        f"model.attention_impl={args.attention}", f"model.scan_blocks={str(args.scan).lower()}",
        f"model.remat={str(args.remat != 'none').lower()}",
        f"model.remat_policy={'full' if args.remat == 'none' else args.remat}",
        f"text.max_length={args.text_tokens}", f"text.compute_dtype={dtype}",
        f"data.resolution={args.resolution}", f"data.patch_size={args.resolution}",
        f"data.global_batch_size={args.batch}", f"optim.name={args.optim}",
        f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
        "validation.every=0", *args.overrides,
    ]  # fmt: skip
    cfg = load_config(None, over)
    mesh = make_mesh(data, fsdp, tensor)
    parts = step_parts(cfg, mesh)
    state, _ = init_train_state(parts.graphdef, parts.builder, parts.tx, mesh, 0)
    batch, frozen = _random(parts.batch, 1), _random(parts.frozen, 2)
    t0 = time.perf_counter()
    compiled = parts.step.lower(state, batch, frozen).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def one():
        holder[0], m = compiled(holder[0], batch, frozen)
        jax.block_until_ready(m["loss"])

    times = time_calls(one, args.steps, warmup=2)
    step_s = median(times)
    img_s = args.batch / step_s
    n_dev = mesh.devices.size
    flops_img = (4.0 if cfg.model.remat else 3.0) * forward_flops_per_image(
        parts.prx, parts.tokens, args.text_tokens
    )
    model_flops_img = 3.0 * forward_flops_per_image(parts.prx, parts.tokens, args.text_tokens)
    tflops = model_flops_img * img_s / n_dev / 1e12
    dev = jax.devices()[0]
    peak = device_peak_tflops(dev)
    peak_source = "datasheet bf16"
    if cpu:
        peak = matmul_peak_tflops(jnp.dtype(dtype))
        peak_source = f"measured {dtype} 1024^3 matmul, this run"
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak_mem = (stats or {}).get("peak_bytes_in_use")
    mem = compiled.memory_analysis()
    row = {
        **environment(),
        "preset": args.preset,
        "resolution": args.resolution,
        "image_tokens": parts.tokens,
        "text_tokens": args.text_tokens,
        "global_batch": args.batch,
        "mesh": dict(mesh.shape),
        "compute_dtype": dtype,
        "param_dtype": cfg.model.param_dtype,
        "overrides": list(args.overrides),
        "remat": args.remat,
        "scan_blocks": args.scan,
        "attention": args.attention,
        "optimizer": args.optim,
        "steps": args.steps,
        "median_step_s": step_s,
        "img_per_s": img_s,
        "img_per_s_per_device": img_s / n_dev,
        "model_tflops_per_device": tflops,
        "hardware_tflops_per_device": flops_img * img_s / n_dev / 1e12,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": tflops / peak if peak else None,
        "compile_s": compile_s,
        "peak_device_memory_gb": None if peak_mem is None else peak_mem / 2**30,
        "compiled_temp_gb": getattr(mem, "temp_size_in_bytes", 0) / 2**30,
    }
    append_result("train_throughput", row)
    print(
        f"{args.preset} {args.resolution}px batch {args.batch} on {n_dev}x {row['device']}: "
        f"{img_s:.2f} img/s ({img_s / n_dev:.2f}/device), {tflops:.3f} TFLOP/s/device, "
        f"MFU {row['mfu'] or 0:.1%} vs {peak:.3g} TFLOP/s ({peak_source}), compile {compile_s:.1f}"
        f" s, median step {step_s * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
