"""diffusers' ``AutoencoderKL`` in the Flux layout, in Flax NNX with channels-last convolutions,
and the identity "VAE" of pixel models.

Legend: B batch, H/W image size, h/w latent size, C channels, Z latent channels, L = h*w tokens.

Encoder: conv_in, down blocks (resnets, then a stride-2 conv padded right/bottom), a mid block
(resnet, single-head self-attention, resnet), group norm, SiLU, conv_out to 2Z (mean, log-variance).
Decoder: conv_in, mid block, up blocks (resnets, then nearest x2 and a conv), norm, SiLU, conv_out.
No quant convs. Attribute names mirror diffusers', so the converter is a rename plus transposes.
Public methods take and return channels-first ``[B, C, H, W]`` like the pipeline; latents are
scaled as ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from prx_jax.nn.linear import Linear


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3  # image channels
    out_channels: int = 3
    latent_channels: int = 16  # Z
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # one down/up block each
    layers_per_block: int = 2  # resnets per down block (up blocks have one more)
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} do not divide by {self.norm_num_groups}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class Conv2d(nnx.Module):
    """A channels-last convolution; kernel ``(kh, kw, in, out)``, torch's default init."""

    def __init__(
        self, cin, cout, k=3, *, stride=1, padding=1, rngs, param_dtype=jnp.float32, dtype=None
    ):
        bound = 1.0 / (cin * k * k) ** 0.5
        kernel = jax.random.uniform(rngs.params(), (k, k, cin, cout), param_dtype, -bound, bound)
        bias = jax.random.uniform(rngs.params(), (cout,), param_dtype, -bound, bound)
        self.kernel = nnx.Param(kernel, logical_axes=("conv_k", "conv_k", "conv_in", "conv_out"))
        self.bias = nnx.Param(bias, logical_axes=("conv_out",))
        self.stride, self.padding, self.dtype = stride, padding, dtype

    def __call__(self, x_BxHxWxC, padding=None):
        dtype = self.dtype or x_BxHxWxC.dtype
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x_BxHxWxC.astype(dtype),
            self.kernel[...].astype(dtype),
            (self.stride, self.stride),
            padding if padding is not None else ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(dtype)


class GroupNorm(nnx.Module):
    """torch's GroupNorm on channels-last input: fp32 statistics, affine, result in input dtype."""

    def __init__(
        self, groups, channels, *, eps=1e-6, param_dtype=jnp.float32, dtype=None, rngs=None
    ):
        self.weight = nnx.Param(jnp.ones((channels,), param_dtype), logical_axes=("conv_out",))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype), logical_axes=("conv_out",))
        self.groups, self.eps = groups, eps

    def __call__(self, x_BxHxWxC):
        B, H, W, C = x_BxHxWxC.shape
        x = x_BxHxWxC.astype(jnp.float32).reshape(B, H, W, self.groups, C // self.groups)
        mean = jnp.mean(x, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 4), keepdims=True)
        y = ((x - mean) * jax.lax.rsqrt(var + self.eps)).reshape(B, H, W, C)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x_BxHxWxC.dtype)


class ResnetBlock2D(nnx.Module):
    def __init__(self, cin, cout, groups, *, rngs, **kw):
        self.norm1 = GroupNorm(groups, cin, **kw)
        self.conv1 = Conv2d(cin, cout, rngs=rngs, **kw)
        self.norm2 = GroupNorm(groups, cout, **kw)
        self.conv2 = Conv2d(cout, cout, rngs=rngs, **kw)
        self.conv_shortcut = nnx.data(
            Conv2d(cin, cout, 1, padding=0, rngs=rngs, **kw) if cin != cout else None
        )

    def __call__(self, x_BxHxWxC):
        h = self.conv1(jax.nn.silu(self.norm1(x_BxHxWxC)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = x_BxHxWxC if self.conv_shortcut is None else self.conv_shortcut(x_BxHxWxC)
        return skip + h


class Attention(nnx.Module):
    """The mid block's single-head self-attention over all pixels, with a residual."""

    def __init__(self, channels, groups, *, rngs, **kw):
        lin = dict(axes=("conv_in", "conv_out"), rngs=rngs, **kw)
        self.group_norm = GroupNorm(groups, channels, **kw)
        self.to_q = Linear(channels, channels, **lin)
        self.to_k = Linear(channels, channels, **lin)
        self.to_v = Linear(channels, channels, **lin)
        self.to_out = nnx.List([Linear(channels, channels, **lin)])

    def __call__(self, x_BxHxWxC):
        B, H, W, C = x_BxHxWxC.shape
        h_BxLxC = self.group_norm(x_BxHxWxC).reshape(B, H * W, C)
        q, k, v = self.to_q(h_BxLxC), self.to_k(h_BxLxC), self.to_v(h_BxLxC)
        out_BxLx1xC = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])
        out = self.to_out[0](out_BxLx1xC.reshape(B, H * W, C))
        return x_BxHxWxC + out.reshape(B, H, W, C).astype(x_BxHxWxC.dtype)


class MidBlock(nnx.Module):
    def __init__(self, channels, groups, add_attention, *, rngs, **kw):
        self.resnets = nnx.List(
            [ResnetBlock2D(channels, channels, groups, rngs=rngs, **kw) for _ in range(2)]
        )
        attn = [Attention(channels, groups, rngs=rngs, **kw)] if add_attention else []
        self.attentions = nnx.List(attn)

    def __call__(self, x):
        x = self.resnets[0](x)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    def __init__(self, channels, *, rngs, **kw):
        self.conv = Conv2d(channels, channels, stride=2, padding=0, rngs=rngs, **kw)

    def __call__(self, x):
        return self.conv(x, padding=((0, 1), (0, 1)))  # diffusers pads right and bottom only


class Upsample(nnx.Module):
    def __init__(self, channels, *, rngs, **kw):
        self.conv = Conv2d(channels, channels, rngs=rngs, **kw)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))  # nearest x2


class Block(nnx.Module):
    """DownEncoderBlock2D (``downsamplers``) or UpDecoderBlock2D (``upsamplers``)."""

    def __init__(self, cin, cout, n, groups, resample, *, rngs, **kw):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs=rngs, **kw)
                for i in range(n)
            ]
        )
        self.downsamplers = nnx.data(None)
        self.upsamplers = nnx.data(None)
        if resample == "down":
            self.downsamplers = nnx.List([Downsample(cout, rngs=rngs, **kw)])
        elif resample == "up":
            self.upsamplers = nnx.List([Upsample(cout, rngs=rngs, **kw)])

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        for s in self.downsamplers or self.upsamplers or ():
            x = s(x)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs, **kw):
        ch, G = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = Conv2d(cfg.in_channels, ch[0], rngs=rngs, **kw)
        self.down_blocks = nnx.List(
            [
                Block(ch[max(i - 1, 0)], c, cfg.layers_per_block, G,
                      "down" if i < len(ch) - 1 else None, rngs=rngs, **kw)
                for i, c in enumerate(ch)
            ]
        )  # fmt: skip
        self.mid_block = MidBlock(ch[-1], G, cfg.mid_block_add_attention, rngs=rngs, **kw)
        self.conv_norm_out = GroupNorm(G, ch[-1], **kw)
        self.conv_out = Conv2d(ch[-1], 2 * cfg.latent_channels, rngs=rngs, **kw)

    def __call__(self, x_BxHxWxC):
        x = self.conv_in(x_BxHxWxC)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs, **kw):
        ch, G = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = Conv2d(cfg.latent_channels, ch[0], rngs=rngs, **kw)
        self.mid_block = MidBlock(ch[0], G, cfg.mid_block_add_attention, rngs=rngs, **kw)
        self.up_blocks = nnx.List(
            [
                Block(ch[max(i - 1, 0)], c, cfg.layers_per_block + 1, G,
                      "up" if i < len(ch) - 1 else None, rngs=rngs, **kw)
                for i, c in enumerate(ch)
            ]
        )  # fmt: skip
        self.conv_norm_out = GroupNorm(G, ch[-1], **kw)
        self.conv_out = Conv2d(ch[-1], cfg.out_channels, rngs=rngs, **kw)

    def __call__(self, z_BxhxwxZ):
        x = self.mid_block(self.conv_in(z_BxhxwxZ))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """``encode(images [B,C,H,W]) -> scaled latents [B,Z,h,w]``; ``decode`` inverts it."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None):
        self.config = config
        kw = {"param_dtype": param_dtype, "dtype": dtype}
        self.dtype = dtype or param_dtype
        self.encoder = Encoder(config, rngs=rngs, **kw)
        self.decoder = Decoder(config, rngs=rngs, **kw)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    def moments(self, images_BxHxWxC):
        """Channels-last images -> ``(mean, logvar)`` ``[B, h, w, Z]``, logvar clamped."""
        mean, logvar = jnp.split(self.encoder(images_BxHxWxC.astype(self.dtype)), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode(self, images_BxCxHxW, key: jax.Array | None = None):
        """Scaled latents: the posterior mean, or a sample of it when ``key`` is given."""
        mean, logvar = self.moments(images_BxCxHxW.transpose(0, 2, 3, 1))
        z = mean
        if key is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        cfg = self.config
        return ((z - cfg.shift_factor) * cfg.scaling_factor).transpose(0, 3, 1, 2)

    def decode(self, latents_BxZxhxw):
        cfg = self.config
        z = latents_BxZxhxw.transpose(0, 2, 3, 1) / cfg.scaling_factor + cfg.shift_factor
        return self.decoder(z.astype(self.dtype)).transpose(0, 3, 1, 2)


class IdentityVAE:
    """Pixel models: "latents" are the images themselves, in [-1, 1]."""

    def __init__(self, channels: int = 3):
        self.latent_channels = channels
        self.spatial_factor = 1

    def encode(self, images_BxCxHxW, key: jax.Array | None = None):
        return jnp.asarray(images_BxCxHxW)

    def decode(self, latents_BxCxHxW):
        return jnp.asarray(latents_BxCxHxW)
