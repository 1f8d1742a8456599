"""The one error type converters raise, listing every problem at once, and the key-by-key check
that collects those problems."""

from __future__ import annotations

from collections.abc import Mapping

from prx_jax.convert.safetensors_io import FLOAT_NAMES, TensorInfo


class ConversionError(ValueError):
    """Weights that do not fit the target model: every missing, unexpected or mis-shaped key."""

    @classmethod
    def from_problems(cls, source: str, problems: dict[str, list[str]]) -> ConversionError:
        lines = [f"cannot convert {source}:"]
        for kind, items in problems.items():
            if items:
                lines.append(f"  {kind} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        return cls("\n".join(lines))


class TensorCheck:
    """Source tensors checked key by key against what a model needs; ``raise_if_any`` then names
    every missing, unexpected, mis-shaped or non-floating tensor in one ConversionError."""

    def __init__(self, tensors: Mapping[str, TensorInfo]):
        self.tensors = tensors
        self.expected: set[str] = set()
        self.problems: dict[str, list[str]] = {
            "missing": [],
            "unexpected": [],
            "mis-shaped": [],
            "not floating": [],
        }

    def take(self, key: str, want: tuple[int, ...]) -> TensorInfo | None:
        """The tensor stored under ``key`` (None when missing), recording what is wrong with it."""
        self.expected.add(key)
        info = self.tensors.get(key)
        if info is None:
            self.problems["missing"].append(f"{key} {want}")
        elif info.shape != want:
            self.problems["mis-shaped"].append(f"{key}: source {info.shape}, model needs {want}")
        elif info.dtype not in FLOAT_NAMES:
            self.problems["not floating"].append(f"{key}: {info.dtype}")
        return info

    def raise_if_any(self, source: str) -> None:
        self.problems["unexpected"] = sorted(k for k in self.tensors if k not in self.expected)
        if any(self.problems.values()):
            raise ConversionError.from_problems(source, self.problems)
