"""The one-way import rule (STYLE.md): config -> nn -> models -> train/convert/sample; data,
diffusion and parallel never import models; nothing imports torch at module level."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "prx_jax"
FORBIDDEN = {
    "nn": ("prx_jax.models", "prx_jax.train", "prx_jax.convert", "prx_jax.data"),
    "data": ("prx_jax.models", "prx_jax.train", "prx_jax.convert"),
    "diffusion": ("prx_jax.models", "prx_jax.train", "prx_jax.convert"),
    "parallel": ("prx_jax.models", "prx_jax.train", "prx_jax.convert", "prx_jax.data"),
    "models": ("prx_jax.train", "prx_jax.convert"),
}
HEAVY = ("torch", "diffusers", "transformers")


def _module_level_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_one_way_imports_and_no_heavy_module_level_imports():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        top = rel.parts[0] if len(rel.parts) > 1 else None
        for mod in _module_level_imports(path):
            if mod.split(".")[0] in HEAVY:
                problems.append(f"{rel}: imports {mod} at module level")
            for banned in FORBIDDEN.get(top, ()):
                if mod == banned or mod.startswith(banned + "."):
                    problems.append(f"{rel}: {top}/ must not import {mod}")
    assert not problems, "\n".join(problems)
