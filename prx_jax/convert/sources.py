"""Finding the weights behind a user-supplied path: what kind of source it is and which files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prx_jax.convert.safetensors_io import TensorInfo, read_index

PRX_JAX_MARKER = "prx_jax.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"


@dataclass(frozen=True)
class Source:
    kind: str  # "diffusers" | "prx_jax" | "research"
    path: Path  # the folder (diffusers, prx_jax) or the weights file (research)

    def config_dict(self) -> dict | None:
        if self.kind == "research":
            return None
        return json.loads((self.path / "config.json").read_text())


def find_source(path: str | Path, component: str = "transformer") -> Source:
    """A diffusers ``transformer/`` folder, a pipeline root, a prx_jax weights folder, or a
    research checkpoint (``.safetensors`` file or ``.index.json``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".safetensors" or path.name.endswith(".index.json"):
            return Source("research", path)
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            raise ValueError(f"{path}: pickle checkpoints are never loaded; save it as safetensors")
        raise ValueError(f"{path}: not a safetensors checkpoint")
    if (path / PRX_JAX_MARKER).exists():
        return Source("prx_jax", path)
    if (path / "model_index.json").exists():
        sub = path / component
        if not sub.is_dir():
            raise FileNotFoundError(f"{path} is a pipeline folder without a {component}/ folder")
        return find_source(sub, component)
    if (path / "config.json").exists():
        return Source("diffusers", path)
    raise ValueError(
        f"{path}: not a diffusers {component} folder (config.json), a pipeline folder "
        f"(model_index.json) or a prx_jax weights folder ({PRX_JAX_MARKER})"
    )


def diffusers_tensors(folder: Path, stem: str = DIFFUSERS_WEIGHTS) -> dict[str, TensorInfo]:
    """The tensors of ``{stem}.safetensors`` or its sharded ``.index.json``; never a pickle."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.exists():
        return read_index(single)
    if index.exists():
        return read_index(index)
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {pickles}: pickle files are never loaded)" if pickles else ""
    raise FileNotFoundError(f"{folder}: no {single.name} or {index.name}{hint}")
