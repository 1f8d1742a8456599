"""Declarative key map between prx_jax's NNX parameter paths and diffusers' state-dict keys.

NNX attribute names mirror diffusers' modules, so the map is: join the path with dots, ``kernel`` ->
``weight`` (transposed: Flax kernels are ``(in, out)``, torch weights ``(out, in)``), and the one
module diffusers wraps in a Sequential (``final_layer.adaLN_modulation.1``). Research checkpoints
(Photoroom's PRX trainer) use a few other names, renamed here before the strict match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# NNX path part -> diffusers key part, for modules diffusers nests inside a Sequential.
_PART_RENAMES = {"adaLN_modulation": "adaLN_modulation.1"}

# Photoroom PRX research checkpoint names -> diffusers names (scripts/convert_prx_to_diffusers.py).
_RESEARCH_RENAMES = [
    (
        re.compile(r"^blocks\.(\d+)\.img_qkv_proj\.weight$"),
        r"blocks.\1.attention.img_qkv_proj.weight",
    ),
    (
        re.compile(r"^blocks\.(\d+)\.txt_kv_proj\.weight$"),
        r"blocks.\1.attention.txt_kv_proj.weight",
    ),
    (
        re.compile(r"^blocks\.(\d+)\.qk_norm\.query_norm\.(scale|weight)$"),
        r"blocks.\1.attention.norm_q.weight",
    ),
    (
        re.compile(r"^blocks\.(\d+)\.qk_norm\.key_norm\.(scale|weight)$"),
        r"blocks.\1.attention.norm_k.weight",
    ),
    (
        re.compile(r"^blocks\.(\d+)\.k_norm\.(scale|weight)$"),
        r"blocks.\1.attention.norm_added_k.weight",
    ),
    (re.compile(r"^blocks\.(\d+)\.attn_out\.weight$"), r"blocks.\1.attention.to_out.0.weight"),
]
RESEARCH_PREFIX = "state.model.denoiser."


def diffusers_key(path: Sequence[str | int]) -> tuple[str, bool]:
    """``(key, transpose)`` for one NNX parameter path."""
    *parents, leaf = (str(p) for p in path)
    parents = [_PART_RENAMES.get(p, p) for p in parents]
    if leaf == "kernel":
        return ".".join([*parents, "weight"]), True
    return ".".join([*parents, leaf]), False


def is_stacked(path: Sequence[str | int]) -> bool:
    """A parameter of scanned blocks (``scan_blocks=True``): ``blocks.<name>...`` with a leading
    layers axis, where the per-block layout has ``blocks.<i>.<name>...``."""
    parts = [str(p) for p in path]
    return len(parts) > 2 and parts[0] == "blocks" and not parts[1].isdigit()


def layer_paths(path: Sequence[str | int], depth: int) -> list[tuple[str, ...]]:
    """The per-block paths a parameter covers: one per layer when stacked, else itself."""
    parts = tuple(str(p) for p in path)
    if not is_stacked(parts):
        return [parts]
    return [("blocks", str(i), *parts[1:]) for i in range(depth)]


def research_to_diffusers(key: str) -> str:
    for pattern, repl in _RESEARCH_RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def diffusers_to_research(key: str) -> str:
    """Inverse of ``research_to_diffusers`` (norm scales are written as ``.scale``)."""
    m = re.match(r"^blocks\.(\d+)\.attention\.(.+)$", key)
    if not m:
        return key
    i, rest = m.groups()
    names = {
        "img_qkv_proj.weight": "img_qkv_proj.weight",
        "txt_kv_proj.weight": "txt_kv_proj.weight",
        "norm_q.weight": "qk_norm.query_norm.scale",
        "norm_k.weight": "qk_norm.key_norm.scale",
        "norm_added_k.weight": "k_norm.scale",
        "to_out.0.weight": "attn_out.weight",
    }
    return f"blocks.{i}.{names[rest]}"
