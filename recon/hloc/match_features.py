"""hloc's ``match_features`` on recon's matchers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matchers
from ..io.pairs import read_pairs, unique_pairs
from ..match import match_pairs

confs: dict[str, dict[str, Any]] = {
    "NN-mutual": {"output": "matches-NN-mutual", "model": {"name": "nearest_neighbor", "do_mutual_check": True}},
    "NN-ratio": {"output": "matches-NN-mutual-ratio.8",
                 "model": {"name": "nearest_neighbor", "do_mutual_check": True, "ratio_threshold": 0.8}},
    "superpoint+lightglue": {"output": "matches-superpoint-lightglue", "model": {"name": "lightglue", "features": "superpoint"}},
    "disk+lightglue": {"output": "matches-disk-lightglue", "model": {"name": "lightglue", "features": "disk"}},
    "aliked+lightglue": {"output": "matches-aliked-lightglue", "model": {"name": "lightglue", "features": "aliked"}},
    "omniglue": {"output": "matches-omniglue", "model": {"name": "omniglue"}},
}


def stage_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """An hloc matching conf as a recon ``matcher`` stage conf.

    hloc's nearest-neighbour defaults are "no ratio, no distance test"; its ``do_mutual_check``
    is our ``mutual_check``.
    """
    model = dict(conf["model"])
    name = model.pop("name")
    if name == "nearest_neighbor":
        stage = {"name": name, "mutual_check": bool(model.get("do_mutual_check", True)),
                 "ratio_threshold": model.get("ratio_threshold"), "distance_threshold": model.get("distance_threshold")}
    else:
        defaults = matchers.model_class(name).default_conf
        stage = {"name": name, **{k: v for k, v in model.items() if k in defaults}}
    stage.update(weights="official", batch_size=0)
    return stage


def main(conf: dict, pairs: Path, features: Path | str, export_dir: Path | None = None,
         matches: Path | None = None, features_ref: Path | None = None, overwrite: bool = False) -> Path:
    """Match the pairs of ``pairs`` into ``matches`` (hloc's naming rules when not given)."""
    if isinstance(features, Path) or Path(features).exists():
        features_q = Path(features)
        if matches is None:
            raise ValueError("Either provide both features and matches as Path or both as names.")
    else:
        if export_dir is None:
            raise ValueError(f"Provide an export_dir if features is not a file path: {features}.")
        features_q = Path(export_dir, features + ".h5")
        if matches is None:
            matches = Path(export_dir, f"{features}_{conf['output']}_{Path(pairs).stem}.h5")
    matches = Path(matches)
    if overwrite:
        matches.unlink(missing_ok=True)
    match_pairs(unique_pairs(read_pairs(pairs)), features_q, stage_conf(conf), matches,
                matchers.resolve_device("auto"), features_ref=Path(features_ref) if features_ref else None)
    return matches
