"""One registry of official checkpoints and the rules for finding them on disk.

Every network in ``matchers`` loads an OFFICIAL checkpoint, unchanged, by the name it is published
under. Resolution order for ``resolve(name_or_path)``:

1. an explicit path to an existing file;
2. ``$RECON_WEIGHTS/<file name>`` (a folder users fill by hand on offline machines);
3. the torch hub cache, ``<torch.hub.get_dir()>/checkpoints/<file name>`` (where the official
   repositories themselves cache, so files they already downloaded are reused);
4. a download from the official URL into the torch hub cache.

When every step fails (offline, or no URL is public) the error names the URL and the path the
file is expected at, so a user can place it by hand.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


class WeightsNotFoundError(FileNotFoundError):
    """An official checkpoint is neither on disk nor downloadable."""


StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint: where it is published and how its keys map onto our modules.

    ``extract`` turns the loaded file (whatever container the authors used: a flat state dict,
    ``{"model": ...}``, a Lightning ``{"state_dict": ...}``) into the flat state dict our module
    expects; it is where each documented key remapping lives.
    """

    name: str
    url: str
    filename: str
    sha256: str | None = None
    license: str = ""
    extract: Callable[[Any], StateDict] | None = None
    notes: str = ""
    allowlist: tuple[Any, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, Checkpoint] = {}

# What Lightning checkpoints (GIM's *.ckpt) pickle besides tensors: their hyper-parameters (yacs
# CfgNodes inside Lightning's AttributeDict). Loading stays weights_only: these dict subclasses are
# rebuilt as plain OrderedDicts (nothing of theirs is executed), argparse.Namespace as itself.
LIGHTNING_ALLOWLIST: tuple[Any, ...] = (
    (OrderedDict, "yacs.config.CfgNode"),
    (OrderedDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (OrderedDict, "lightning_fabric.utilities.data.AttributeDict"),
    argparse.Namespace,
)


def register_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """Add an official checkpoint to the registry (names are unique)."""
    if checkpoint.name in _REGISTRY and _REGISTRY[checkpoint.name] != checkpoint:
        raise ValueError(f"checkpoint '{checkpoint.name}' is registered twice")
    _REGISTRY[checkpoint.name] = checkpoint
    return checkpoint


def checkpoint(name: str) -> Checkpoint:
    """The registry entry for ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no official checkpoint named '{name}'; known: {sorted(_REGISTRY)}") from None


def checkpoints() -> list[str]:
    """Names of every registered official checkpoint."""
    return sorted(_REGISTRY)


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def candidate_paths(filename: str) -> list[Path]:
    """Where a checkpoint file is looked for, in order (without downloading)."""
    paths = []
    if os.environ.get("RECON_WEIGHTS"):
        paths.append(Path(os.environ["RECON_WEIGHTS"]) / filename)
    paths.append(hub_checkpoint_dir() / filename)
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name_or_path: str | os.PathLike, download: bool = True) -> Path:
    """Find (or download) an official checkpoint and return its local path.

    ``name_or_path`` is a path to a file, or a registered checkpoint name. Downloads go to a
    temporary name in the hub cache and are renamed when complete, so an interrupted download
    never leaves a truncated checkpoint behind.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if str(name_or_path) not in _REGISTRY:
        raise WeightsNotFoundError(
            f"'{name_or_path}' is neither an existing file nor a registered checkpoint "
            f"(registered: {', '.join(checkpoints())})"
        )
    entry = _REGISTRY[str(name_or_path)]
    for candidate in candidate_paths(entry.filename):
        if candidate.is_file():
            return candidate
    target = hub_checkpoint_dir() / entry.filename
    if download and entry.url:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            torch.hub.download_url_to_file(entry.url, str(partial), progress=True)
            if entry.sha256 and sha256_of(partial) != entry.sha256:
                partial.unlink()
                raise WeightsNotFoundError(f"{entry.url} downloaded with a wrong sha256")
            partial.replace(target)
            return target
        except WeightsNotFoundError:
            raise
        except Exception as error:  # network errors vary by platform; all mean "not here"
            reason = f"download failed ({type(error).__name__}: {error})"
    else:
        reason = "downloads disabled" if entry.url else "no public URL"
    places = " or ".join(str(p) for p in candidate_paths(entry.filename))
    raise WeightsNotFoundError(
        f"official checkpoint '{entry.name}' not found: {reason}. Download {entry.url or '(see notes)'} "
        f"and put it at {places} (or pass its path). {entry.notes}".strip()
    )


def load_file(path: str | os.PathLike, allowlist: tuple[Any, ...] = ()) -> Any:
    """Load a checkpoint file without executing pickled code (``weights_only=True``).

    ``allowlist`` names the few non-tensor classes an official container holds (e.g. the
    ``argparse.Namespace`` in MASt3R checkpoints); nothing else can be unpickled.
    """
    with torch.serialization.safe_globals(list(allowlist)):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def load_state_dict(name_or_path: str | os.PathLike, entry: str | None = None) -> StateDict:
    """Resolve a checkpoint and return the flat state dict our module expects.

    A registered name reads with its own layout; anything else is a path (``~`` allowed), read
    with the layout of ``entry`` - a user's own copy of an official file keeps the official layout.
    """
    spec = _REGISTRY.get(str(name_or_path)) or (_REGISTRY.get(entry) if entry is not None else None)
    path = resolve(name_or_path)
    raw = load_file(path, spec.allowlist if spec else ())
    if spec is not None and spec.extract is not None:
        return spec.extract(raw)
    if isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return raw
    raise ValueError(f"{path}: not a flat state dict and no registered layout says how to read it")
