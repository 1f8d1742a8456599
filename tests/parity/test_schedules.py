"""Inference schedules and the Euler sampler against diffusers' FlowMatchEulerDiscreteScheduler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prx_jax.diffusion import (
    PIXEL_NOISE_SCALE,
    euler_sample,
    flow_match_sigmas,
    model_times,
    research_sigmas,
)

pytestmark = pytest.mark.parity
B, C, H, W, L, D = 3, 5, 7, 6, 4, 9  # distinct odd-ish dims


def _diffusers_scheduler(shift, num_steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(num_steps)
    return sched


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
@pytest.mark.parametrize("num_steps", [1, 2, 8, 20, 28, 50])
def test_flow_match_sigmas_match_diffusers(shift, num_steps):
    sched = _diffusers_scheduler(shift, num_steps)
    sigmas = flow_match_sigmas(num_steps, shift)
    assert sigmas.dtype == np.float32 and sigmas.shape == (num_steps + 1,)
    np.testing.assert_allclose(sigmas, sched.sigmas.numpy(), rtol=0, atol=1e-6)
    # The pipelines feed the transformer t / 1000, which can differ from sigma by one ulp.
    t_cont = (sched.timesteps.float() / sched.config.num_train_timesteps).numpy()
    np.testing.assert_array_equal(model_times(sigmas), t_cont)


def test_flow_match_sigmas_documented_values():
    """diffusers-format.md §3: 8 steps at shift 3, including the double shift at the low end."""
    want = [1000, 947.543, 882.788, 800.837, 693.793, 548.046, 337.972, 8.929]
    np.testing.assert_allclose(flow_match_sigmas(8, 3.0)[:-1] * 1000, want, atol=2e-3)
    assert flow_match_sigmas(8, 3.0)[-1] == 0.0


def test_research_sigmas_spec_values():
    """Spec §2.5: sigma = shift(linspace(1, 0, N + 1))."""
    np.testing.assert_allclose(research_sigmas(10, 1.0)[:-1], np.linspace(1.0, 0.1, 10), atol=1e-6)
    want = [1.0, 0.9643, 0.9231, 0.875, 0.8182, 0.75, 0.6667, 0.5625, 0.4286, 0.25]
    np.testing.assert_allclose(research_sigmas(10, 3.0)[:-1], want, atol=1e-4)
    assert research_sigmas(50, 3.0)[-2] == pytest.approx(0.0577, abs=1e-4)
    assert research_sigmas(50, 3.0)[-1] == 0.0


# ---- the sampler: a toy linear "denoiser", run by our loop and by diffusers' scheduler.step ----


def _toy_params(seed=0):
    r = np.random.default_rng(seed)
    scale_C = r.uniform(0.3, 0.9, (C,)).astype(np.float32)
    return scale_C, (0.3 * r.standard_normal((C, H, W))).astype(np.float32)


def _toy(scale_C, bias_CHW, x, t_B, embeds_BLD, mask_BL):
    """out = scale x + t bias + text: linear in x, depends on t and the text; no reductions, so
    torch and XLA round it identically and the comparison isolates the sampler."""
    text_B = embeds_BLD[:, 1, 2] * mask_BL[:, 1] + embeds_BLD[:, 3, 0] * mask_BL[:, 3]
    t = t_B[:, None, None, None]
    return scale_C[None, :, None, None] * x + t * bias_CHW[None] + text_B[:, None, None, None]


def _inputs(seed=1):
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, C, H, W)).astype(np.float32)
    cond = (r.standard_normal((B, L, D)).astype(np.float32), r.random((B, L)) < 0.7)
    uncond = (r.standard_normal((B, L, D)).astype(np.float32), r.random((B, L)) < 0.7)
    return x, cond, uncond


def _diffusers_loop(x, cond, uncond, shift, num_steps, guidance, prediction):
    """PRXPipeline / PRXPixelPipeline's denoising loop, with the toy in place of the transformer."""
    import torch

    scale, bias = (torch.from_numpy(a) for a in _toy_params())
    sched = _diffusers_scheduler(shift, num_steps)
    do_cfg = guidance > 1.0
    emb = torch.from_numpy(np.concatenate([uncond[0], cond[0]]) if do_cfg else cond[0])
    mask = torch.from_numpy(np.concatenate([uncond[1], cond[1]]) if do_cfg else cond[1])
    latents = torch.from_numpy(x)
    for t in sched.timesteps:
        t_cont = (t.float() / sched.config.num_train_timesteps).view(1)
        if do_cfg:
            lat_in, t_cont = torch.cat([latents, latents], dim=0), t_cont.repeat(2)
        else:
            lat_in = latents
        out = _toy(scale, bias, lat_in, t_cont[:1].expand(lat_in.shape[0]), emb, mask)
        if do_cfg:
            out_u, out_c = out.chunk(2, dim=0)
            out = out_u + guidance * (out_c - out_u)
        if prediction == "x":
            t_x = torch.clamp(t.float() / sched.config.num_train_timesteps, min=0.05)
            out = (latents - out) / t_x
        latents = sched.step(out, t, latents).prev_sample
    return latents.numpy()


@pytest.mark.parametrize(
    "prediction, shift, num_steps, guidance",
    [
        ("velocity", 3.0, 28, 1.0),
        ("velocity", 3.0, 28, 5.0),
        ("velocity", 1.0, 7, 4.0),
        ("x", 3.0, 20, 1.0),
        ("x", 3.0, 20, 5.0),
        ("x", 1.0, 11, 2.5),
    ],
)
def test_euler_sample_matches_diffusers_pipeline_loop(prediction, shift, num_steps, guidance):
    x, cond, uncond = _inputs()
    if prediction == "x":
        x = x * PIXEL_NOISE_SCALE
    scale, bias = (jnp.asarray(a) for a in _toy_params())
    denoise = functools.partial(_toy, scale, bias)
    sigmas = flow_match_sigmas(num_steps, shift)

    @jax.jit
    def sample(x, cond, uncond):
        return euler_sample(
            denoise, x, sigmas, cond=cond, uncond=uncond, guidance_scale=guidance,
            prediction=prediction, times=model_times(sigmas),
        )  # fmt: skip

    got = sample(jnp.asarray(x), cond, uncond)
    want = _diffusers_loop(x, cond, uncond, shift, num_steps, guidance, prediction)
    assert got.dtype == jnp.float32 and got.shape == (B, C, H, W)
    # 1e-6 relative: XLA contracts the toy's multiply-adds into FMAs (1 ulp vs torch eager).
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_guidance_at_most_one_or_no_uncond_is_conditional():
    x, cond, uncond = _inputs()
    scale, bias = (jnp.asarray(a) for a in _toy_params())
    denoise = functools.partial(_toy, scale, bias)
    sigmas = flow_match_sigmas(4, 3.0)
    plain = euler_sample(denoise, jnp.asarray(x), sigmas, cond=cond)
    for kw in (dict(uncond=uncond, guidance_scale=1.0), dict(uncond=None, guidance_scale=5.0)):
        np.testing.assert_array_equal(
            euler_sample(denoise, jnp.asarray(x), sigmas, cond=cond, **kw), plain
        )
    guided = euler_sample(
        denoise, jnp.asarray(x), sigmas, cond=cond, uncond=uncond, guidance_scale=3.0
    )
    assert float(jnp.abs(guided - plain).max()) > 1e-3


def test_bf16_sampler_keeps_dtype_and_tracks_fp32():
    x, cond, _ = _inputs()
    scale, bias = (jnp.asarray(a) for a in _toy_params())

    def denoise(x, t, e, m):
        return _toy(scale, bias, x, t, e, m).astype(x.dtype)

    sigmas = flow_match_sigmas(8, 3.0)
    for prediction in ("velocity", "x"):
        lo = euler_sample(denoise, jnp.asarray(x, jnp.bfloat16), sigmas, cond=cond,
                          prediction=prediction)  # fmt: skip
        hi = euler_sample(denoise, jnp.asarray(x), sigmas, cond=cond, prediction=prediction)
        assert lo.dtype == jnp.bfloat16
        np.testing.assert_allclose(lo.astype(jnp.float32), hi, atol=0.1 * float(jnp.abs(hi).max()))
