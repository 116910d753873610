"""The one base class every network in `matchers` derives from.

A model is configured by a flat ``conf`` dict whose keys and value types are fixed by the class's
``default_conf``: a misspelt option is an error, not a silently ignored keyword. Models take and
return plain dicts of tensors (shapes documented on each class), like hloc and LightGlue, so the
pipeline can treat every extractor, matcher and depth network alike.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class ConfigError(ValueError):
    """An option that the model does not define, or a value of the wrong type."""


def merge_conf(defaults: dict[str, Any], overrides: dict[str, Any], owner: str) -> dict[str, Any]:
    """Return ``defaults`` updated by ``overrides``; unknown keys raise :class:`ConfigError`.

    Values are coerced to the type of the default where that is lossless (int -> float, str of a
    number from a command line -> number), so ``--set matcher.ratio_threshold=0.8`` works.
    """
    conf = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{owner}: unknown option '{key}' (known options: {known})")
        conf[key] = coerce_value(value, defaults[key], f"{owner}.{key}")
    return conf


def coerce_value(value: Any, default: Any, where: str) -> Any:
    """Coerce ``value`` to the type of ``default`` (``None`` defaults accept anything)."""
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if kind in (list, tuple):
        if isinstance(value, (list, tuple)):
            return kind(value)
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


class BaseModel(nn.Module):
    """A network with a typed configuration.

    Subclasses set ``default_conf`` (every option with its default, which fixes its type),
    ``required_inputs`` (keys their ``forward`` reads from its input dict) and ``kind``
    (``"extractor"``, ``"matcher"``, ``"dense_matcher"``, ``"depth"``, ``"pair_model"``).
    Most models take one dict of tensors and return one (hloc / LightGlue style); models whose
    official call differs (MASt3R's ``model(view1, view2)``) keep the official call.
    """

    default_conf: ClassVar[dict[str, Any]] = {}
    required_inputs: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str] = "model"

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        self.conf = merge_conf(self.default_conf, conf, type(self).__name__)

    def check_inputs(self, data: dict[str, Any]) -> None:
        """Raise a KeyError naming the missing inputs, before any work is done."""
        missing = [k for k in self.required_inputs if k not in data]
        if missing:
            raise KeyError(f"{type(self).__name__} needs inputs {missing}; got {sorted(data)}")

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")
