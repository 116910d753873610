"""Named choices for each pipeline stage, with typed default options.

A stage (``pairs``, ``mapper``, ``priors``, ...) keeps one :class:`StageRegistry`; each choice
registers its function with the options it accepts and their defaults. The config system checks
YAML and ``--set`` overrides against these defaults (unknown key -> error naming the key; values
coerced to the default's type), so every option has one typed default, in code, next to the
function that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from matchers.base import merge_conf


@dataclass(frozen=True)
class Choice:
    name: str
    function: Callable[..., Any]
    defaults: dict[str, Any]
    doc: str


class StageRegistry:
    """The choices of one stage: ``registry.register("name", option=default)(function)``."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._choices: dict[str, Choice] = {}

    def register(self, name: str, **defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._choices:
                raise ValueError(f"{self.stage}: '{name}' is registered twice")
            doc = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
            self._choices[name] = Choice(name, function, dict(defaults), doc)
            return function
        return add

    def get(self, name: str) -> Choice:
        try:
            return self._choices[name]
        except KeyError:
            raise KeyError(f"{self.stage}: unknown choice '{name}' (known: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return sorted(self._choices)

    def conf(self, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults of ``name`` updated by ``overrides`` (validated and type-coerced)."""
        return merge_conf(self.get(name).defaults, overrides, f"{self.stage}.{name}")
