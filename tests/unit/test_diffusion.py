"""Flow-matching math: timestep sampling, bins, noising and loss (spec §2.2-2.4, §3.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prx_jax.diffusion import (
    FlowObjective,
    add_noise,
    bin_index,
    binned_mean,
    loss_per_sample,
    model_output_to_velocity,
    sample_timesteps,
    time_shift,
)

N_DRAWS = 200_000


def test_time_shift_fixes_ends_and_is_identity_at_one():
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(time_shift(t, 1.0), t, atol=1e-7)
    np.testing.assert_allclose(time_shift(jnp.array([0.0, 1.0]), 3.0), [0.0, 1.0], atol=1e-7)
    assert float(time_shift(0.5, 3.0)) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "shift, mean, median, p_low, p_high",
    [(1.0, 0.50, 0.50, 0.21, 0.35), (3.0, 0.693, 0.738, 0.053, 0.72)],
)
def test_logit_normal_matches_measured_statistics(shift, mean, median, p_low, p_high):
    sample = jax.jit(sample_timesteps, static_argnums=1, static_argnames="shift")
    t = np.asarray(sample(jax.random.key(0), N_DRAWS, shift=shift))
    assert t.dtype == np.float32 and t.shape == (N_DRAWS,)
    assert t.min() >= 1e-3 and t.max() < 1.0
    assert t.mean() == pytest.approx(mean, abs=0.005)
    assert np.median(t) == pytest.approx(median, abs=0.005)
    assert (t < 0.3).mean() == pytest.approx(p_low, abs=0.005)
    assert (t >= 0.6).mean() == pytest.approx(p_high, abs=0.005)


def test_logit_normal_truncation_is_exact_and_mixing_is_unshifted():
    key = jax.random.key(1)
    # Without mixing, a narrow window: every draw lies inside it and follows the conditioned law.
    t = np.asarray(sample_timesteps(key, 50_000, shift=3.0, t_min=0.2, t_max=0.4, uniform_prob=0))
    assert t.min() >= 0.2 and t.max() < 0.4
    u = np.random.default_rng(0).standard_normal(4_000_000)
    ref = time_shift(1 / (1 + np.exp(-u)), 3.0)
    ref = ref[(ref >= 0.2) & (ref < 0.4)]
    assert t.mean() == pytest.approx(ref.mean(), abs=2e-3)
    # Pure mixing: an unshifted uniform on [t_min, t_max).
    t = np.asarray(sample_timesteps(key, N_DRAWS, shift=3.0, uniform_prob=1.0))
    assert t.mean() == pytest.approx((1e-3 + 1.0) / 2, abs=3e-3)


def test_uniform_distribution_is_shifted_without_mixing():
    t = np.asarray(sample_timesteps(jax.random.key(2), N_DRAWS, shift=3.0, distribution="uniform"))
    u = np.linspace(1e-3, 1.0, 100_001)
    assert t.mean() == pytest.approx(time_shift(u, 3.0).mean(), abs=3e-3)
    assert t.min() >= 1e-3 * 3 / (1 + 2e-3) - 1e-7


@pytest.mark.parametrize(
    "kwargs", [dict(t_min=0.5, t_max=0.5), dict(shift=0.0), dict(distribution="beta")]
)
def test_sample_timesteps_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_timesteps(jax.random.key(0), 3, **kwargs)


def test_bins_and_binned_mean():
    t_B = jnp.array([0.0, 0.29, 0.3, 0.59, 0.6, 0.999, 0.1])
    np.testing.assert_array_equal(bin_index(t_B), [0, 0, 1, 1, 2, 2, 0])
    loss_B = jnp.array([1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 3.0])
    mean_K, count_K = jax.jit(binned_mean)(loss_B, t_B)
    np.testing.assert_allclose(mean_K, [2.0, 4.0, 8.0])
    np.testing.assert_array_equal(count_K, [3, 2, 2])
    mean_K, count_K = binned_mean(jnp.ones(2), jnp.array([0.7, 0.8]))
    np.testing.assert_array_equal(mean_K, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(count_K, [0, 0, 2])


def test_add_noise_interpolates():
    k0, k1 = jax.random.split(jax.random.key(3))
    x0, noise = jax.random.normal(k0, (3, 5, 7, 2)), jax.random.normal(k1, (3, 5, 7, 2))
    x_t = add_noise(x0, noise, jnp.array([0.0, 1.0, 0.25]))
    np.testing.assert_allclose(x_t[0], x0[0])
    np.testing.assert_allclose(x_t[1], noise[1])
    np.testing.assert_allclose(x_t[2], 0.75 * x0[2] + 0.25 * noise[2], rtol=1e-6)


def test_x_prediction_unit_case():
    """Spec §2.4: x0_hat = 1, x_t = 2, t = 0.01 gives v_hat = 20 (the clamp is 0.05)."""
    v = model_output_to_velocity(jnp.ones((1, 1)), 2 * jnp.ones((1, 1)), jnp.array([0.01]), "x")
    np.testing.assert_allclose(v, [[20.0]])


def _batch(t_B, seed=4):
    k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.normal(k0, (3, 5, 7, 2))
    noise = jax.random.normal(k1, (3, 5, 7, 2))
    return x0, noise, add_noise(x0, noise, t_B), jax.random.normal(k2, (3, 5, 7, 2))


def test_velocity_loss_is_mse_to_noise_minus_data():
    t_B = jnp.array([0.1, 0.5, 0.9])
    x0, noise, x_t, pred = _batch(t_B)
    loss_B = loss_per_sample(pred.astype(jnp.bfloat16), x0, noise, x_t, t_B)
    assert loss_B.dtype == jnp.float32 and loss_B.shape == (3,)
    ref = ((pred.astype(jnp.bfloat16).astype(np.float32) - (noise - x0)) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(loss_B, ref, rtol=1e-6)


def test_x_prediction_loss_in_v_space():
    t_B = jnp.array([0.01, 0.05, 0.7])
    x0, noise, x_t, pred = _batch(t_B)
    # For t >= 0.05 the x-pred target velocity is exactly eps - x0.
    v = model_output_to_velocity(x0, x_t, t_B, "x")
    np.testing.assert_allclose(v[1:], (noise - x0)[1:], atol=2e-5)
    loss_B = loss_per_sample(pred, x0, noise, x_t, t_B, "x")
    t_c = np.maximum(np.asarray(t_B), 0.05)[:, None, None, None]
    ref = (((np.asarray(x0) - np.asarray(pred)) / t_c) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(loss_B, ref, rtol=1e-4)
    # A perfect prediction has zero loss in both modes.
    np.testing.assert_allclose(loss_per_sample(x0, x0, noise, x_t, t_B, "x"), 0.0, atol=1e-10)
    np.testing.assert_allclose(loss_per_sample(noise - x0, x0, noise, x_t, t_B), 0.0, atol=1e-10)


def test_flow_objective_validates():
    assert FlowObjective().prediction == "velocity"
    with pytest.raises(ValueError, match="prediction"):
        FlowObjective(prediction="eps")
    with pytest.raises(ValueError, match="x_clamp_min"):
        FlowObjective(x_clamp_min=0.0)
