"""Networks for recon: feature extractors, matchers, dense matchers and depth networks.

Every model is built through one registry::

    import matchers
    model = matchers.load("aliked", weights="aliked-n16", max_num_keypoints=2048)
    matchers.names()  # everything registered

``weights=None`` gives the architecture with random initialisation (for tests and speed
benchmarks); a registered checkpoint name or a path loads the OFFICIAL weights strictly (see
``matchers.weights`` for how files are found).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import BaseModel, ConfigError
from .weights import WeightsNotFoundError, load_state_dict


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model: its class, its default checkpoint, and its module."""

    name: str
    module: str
    cls: str
    default_weights: str | None = None
    conf: tuple[tuple[str, Any], ...] = ()
    loader: str | None = None
    builder: str | None = None


# name -> spec; modules are imported lazily so `import matchers` stays cheap.
_MODELS: dict[str, ModelSpec] = {}


def register(name: str, module: str, cls: str, default_weights: str | None = None,
             loader: str | None = None, builder: str | None = None, **conf: Any) -> None:
    """Register a model under ``name``.

    ``module``/``cls`` locate the class (imported on first use); ``default_weights`` is the
    checkpoint ``weights="official"`` selects; ``conf`` fixes options that distinguish this name
    from others sharing the class (e.g. ``gim_roma`` vs ``roma_outdoor``); ``loader`` names a
    function in ``module`` (``loader(model, weights)``) for models whose weights span several
    files; ``builder`` names a function in ``module`` (``builder(weights, **conf) -> model``) for
    checkpoints that carry their own architecture (e.g. MASt3R's constructor string), used
    whenever weights are given.
    """
    spec = ModelSpec(name, module, cls, default_weights, tuple(sorted(conf.items())), loader, builder)
    if name in _MODELS and _MODELS[name] != spec:
        raise ValueError(f"model '{name}' is registered twice")
    _MODELS[name] = spec


def names() -> list[str]:
    """Every registered model name."""
    return sorted(_MODELS)


def has_official_weights(name: str) -> bool:
    """Whether ``weights="official"`` means a checkpoint for this model (classical ones have none)."""
    return _spec(name).default_weights is not None


def model_class(name: str) -> type[BaseModel]:
    spec = _spec(name)
    return getattr(importlib.import_module(spec.module, __name__), spec.cls)


def _spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"no model named '{name}'; registered: {', '.join(names())}") from None


def load(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         **conf: Any) -> BaseModel:
    """Build a registered model, load weights, move it to ``device`` and set eval mode.

    ``weights``: ``None`` (random initialisation), ``"official"`` (the registered default
    checkpoint), a registered checkpoint name, or a path to an official file. Loading is strict:
    a missing or unexpected key is an error.
    """
    spec = _spec(name)
    module = importlib.import_module(spec.module, __name__)
    if weights == "official":
        if spec.default_weights is None:
            raise WeightsNotFoundError(f"model '{name}' has no official checkpoint registered")
        weights = spec.default_weights
    if weights is not None and spec.builder is not None:  # the checkpoint defines the architecture
        model = getattr(module, spec.builder)(weights, **{**dict(spec.conf), **conf})
        return model.to(resolve_device(device)).eval()
    model: BaseModel = getattr(module, spec.cls)(**{**dict(spec.conf), **conf})
    if weights is not None:
        if spec.loader is not None:
            getattr(module, spec.loader)(model, weights)
        else:
            state = load_state_dict(weights, entry=spec.default_weights)
            model.load_state_dict(state, strict=True)
    return model.to(resolve_device(device)).eval()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


from . import registry as _registry  # noqa: E402,F401  (fills _MODELS)

__all__ = ["BaseModel", "ConfigError", "WeightsNotFoundError", "load", "names", "register",
           "resolve_device", "model_class", "has_official_weights"]
