"""The one error type converters raise, listing every problem at once."""

from __future__ import annotations


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
