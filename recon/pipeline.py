"""The reconstruction pipeline: images -> priors -> features -> pairs -> matches -> database ->
mapper -> model, each stage reading the previous stage's files in the output folder.

Output folder layout (hloc's names): ``features.h5``, ``pairs.txt``, ``matches.h5``,
``priors-depth.h5`` (a depth priors choice's maps, :mod:`recon.priors.depth`), ``database.db``,
``sparse/0/`` (COLMAP binary; ``text=True`` adds text), ``points.ply``, ``report.json``,
``cameras.png`` (a top view of cameras and points) and ``plots/`` (match plots of the strongest
pairs, verified inliers in green). A stage whose output exists and was made from the same inputs
and configuration is skipped; depth priors, features and matches resume per image and per pair.
With a depth priors choice (``depth_pro``, ``ground_truth``) and
``priors.metric_scale`` on, the mapper's model is scaled to metres before it is written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

import matchers
from .colmap.database import build_database
from .fingerprint import fingerprint
from .graph import PAIR_STRATEGIES, PairsContext
from .io import h5
from .io.images import ImageInfo, usable_images
from .io.jsonfile import write_json
from .io.pairs import unique_pairs, write_pairs
from .mapping import MAPPERS
from .match import extract_features, match_pairs
from .match.dense import match_dense, match_dense_keypoints
from .match.mast3r import match_mast3r
from .priors import PRIORS
from .priors.depth import DEPTH_FILE, H5DepthSource
from .priors.exif import depth_stamp, is_depth_choice
from .priors.scale import ScaleEstimationError, apply_scale, estimate_metric_scale
from .viz.report import write_run_pictures

logger = logging.getLogger(__name__)
STATE_FILE = ".recon-state.json"


@dataclass
class Pipeline:
    """One run over ``image_dir`` into ``output_dir`` with a validated ``config``."""

    image_dir: Path
    output_dir: Path
    config: dict[str, Any]
    text: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)  # new entries per stage (0: reused)
    infos: list[ImageInfo] = field(default_factory=list)
    priors: dict[str, tuple[float, str]] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    metric_scale: dict[str, Any] | None = None  # the metric-scale step's result (report.json)

    def __post_init__(self) -> None:
        self.image_dir = Path(self.image_dir)
        self.output_dir = Path(self.output_dir)
        self.device = matchers.resolve_device(self.config["device"])
        self.seed = int(self.config["seed"])

    # Paths of every stage's output.
    @property
    def features_path(self) -> Path:
        return self.output_dir / "features.h5"

    @property
    def matches_path(self) -> Path:
        return self.output_dir / "matches.h5"

    @property
    def pairs_path(self) -> Path:
        return self.output_dir / "pairs.txt"

    @property
    def database_path(self) -> Path:
        return self.output_dir / "database.db"

    @property
    def depth_path(self) -> Path:
        return self.output_dir / DEPTH_FILE

    @property
    def model_path(self) -> Path:
        return self.output_dir / "sparse" / "0"

    def timed(self, stage: str, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        return result

    # Stages.
    def find_images(self) -> list[ImageInfo]:
        """The usable images; the output folder is created only once there are some, so bad input
        leaves nothing behind."""
        self.infos = self.timed("images", usable_images, self.image_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.infos

    def compute_priors(self) -> dict[str, tuple[float, str]]:
        """Focal priors per image (and, for a depth choice, every image's depth map in
        priors-depth.h5); reused from the run state when images and options are the same and
        the depth maps are all there (a network such as Depth Pro is not rerun on a resume)."""
        conf = self.config["priors"]
        stamp = fingerprint("priors", conf, [(i.name, i.width, i.height, i.exif_focal) for i in self.infos])
        cached = self.read_state().get("priors")
        if cached and cached["stamp"] == stamp and (not is_depth_choice(conf) or self.depth_source() is not None):
            self.priors = {name: (focal, source) for name, (focal, source) in cached["values"].items()}
            return self.priors
        choice = PRIORS.get(conf["name"])
        self.priors = self.timed("priors", choice.function, self.infos, conf, self)
        self.write_state(priors={"stamp": stamp, "values": self.priors})
        return self.priors

    def depth_source(self) -> H5DepthSource | None:
        """The priors stage's depth maps when the priors choice keeps them and priors-depth.h5
        holds every image for the current options, else None."""
        conf = self.config["priors"]
        if not is_depth_choice(conf) or h5.read_stamp(self.depth_path) != depth_stamp(conf, self.infos):
            return None
        source = H5DepthSource(self.depth_path)
        return source if {i.name for i in self.infos} <= set(source.names()) else None

    def extract(self) -> None:
        if self.config["features"]["name"] == "none" or self.dense:
            return
        names = [info.name for info in self.infos]
        self.computed["features"] = self.timed("features", extract_features, self.image_dir, names,
                                               self.config["features"], self.features_path, self.device)

    def select_pairs(self) -> list[tuple[str, str]]:
        conf = self.config["pairs"]
        names = [info.name for info in self.infos]
        context = PairsContext(self.image_dir, self.output_dir,
                               self.features_path if self.features_path.exists() else None, self.device, self.seed,
                               self.config["matcher"])
        choice = PAIR_STRATEGIES.get(conf["name"])
        pairs = self.timed("pairs", choice.function, names, conf, context)
        self.pairs = unique_pairs(pairs)
        if not self.pairs:
            raise RuntimeError(f"pairs.{conf['name']} selected no image pairs")
        write_pairs(self.pairs_path, self.pairs)
        return self.pairs

    @property
    def matcher_kind(self) -> str:
        return matchers.model_class(self.config["matcher"]["name"]).kind

    @property
    def dense(self) -> bool:
        """Dense matchers and pair networks write features.h5 themselves (no extractor runs),
        unless a dense matcher is told to match an extractor's keypoints (``at_keypoints``)."""
        if self.matcher_kind == "dense_matcher":
            return not self.config["matcher"]["at_keypoints"]
        return self.matcher_kind == "pair_model"

    def match(self) -> None:
        """Sparse matchers match features.h5 keypoints, and so do dense matchers with
        ``at_keypoints`` (through their warp); otherwise dense matchers and pair networks (MASt3R)
        write features.h5 themselves."""
        if self.matcher_kind == "pair_model":
            self.computed["matches"] = self.timed("matches", match_mast3r, self.pairs, self.infos, self.image_dir,
                                                  self.config["matcher"], self.output_dir, self.device)
            return
        if self.matcher_kind == "dense_matcher" and not self.dense:
            self.computed["matches"] = self.timed("matches", match_dense_keypoints, self.pairs, self.image_dir,
                                                  self.features_path, self.config["matcher"], self.matches_path,
                                                  self.device)
            return
        if self.dense:
            self.computed["matches"] = self.timed("matches", match_dense, self.pairs, self.infos, self.image_dir,
                                                  self.config["matcher"], self.output_dir, self.device, self.seed)
            return
        self.computed["matches"] = self.timed("matches", match_pairs, self.pairs, self.features_path,
                                              self.config["matcher"], self.matches_path, self.device)

    def database_fingerprint(self) -> str:
        return fingerprint("database", self.config["features"], self.config["matcher"], self.pairs,
                           self.config["database"], sorted(self.priors.items()), self.seed)

    def build_database(self) -> None:
        stamp = self.database_fingerprint()
        if self.database_path.exists() and self.read_state().get("database") == stamp:
            logger.info("database.db is up to date")
            self.computed["database"] = 0
            return
        self.timed("database", build_database, self.database_path, self.infos, self.priors,
                   self.features_path, self.matches_path, self.pairs, self.config["database"], self.seed)
        self.computed["database"] = len(self.infos)
        self.write_state(database=stamp)

    def map(self) -> pycolmap.Reconstruction:
        """The mapper's model, made metric by the depth priors when they allow it (see
        :meth:`scale_to_metres`), written to sparse/0 and points.ply."""
        conf = self.config["mapper"]
        stamp = fingerprint("mapper", self.database_fingerprint(), conf, self.config["priors"], self.seed)
        state = self.read_state()
        if self.model_path.is_dir() and state.get("mapper") == stamp:
            logger.info("sparse/0 is up to date")
            self.computed["mapping"] = 0
            self.metric_scale = state.get("metric_scale")
            return pycolmap.Reconstruction(self.model_path)
        choice = MAPPERS.get(conf["name"])
        options = {k: v for k, v in conf.items() if k != "name"}
        model = self.timed("mapping", choice.function, self.database_path, self.image_dir, self.output_dir,
                           options, self.device, self.seed)
        self.metric_scale = self.timed("metric_scale", self.scale_to_metres, model)
        self.write_model(model)
        self.computed["mapping"] = model.num_reg_images()
        self.write_state(mapper=stamp, metric_scale=self.metric_scale)
        return model

    def scale_to_metres(self, model: pycolmap.Reconstruction) -> dict[str, Any] | None:
        """Scale ``model`` in place to metres from the priors' depth maps (robust ratio of prior
        to reconstructed depth at the triangulated keypoints, :mod:`recon.priors.scale`).

        Returns the estimate for report.json, ``{"error": ...}`` when no image has enough usable
        depths (the model is then left as the mapper made it), or None when the priors choice
        keeps no depth or ``priors.metric_scale`` is off.
        """
        conf = self.config["priors"]
        if not conf.get("metric_scale"):
            return None
        source = self.depth_source()
        if source is None:
            raise RuntimeError(f"priors.{conf['name']}: {self.depth_path.name} is missing or incomplete; "
                               "rerun the priors stage")
        try:
            estimate = estimate_metric_scale(model, source)
        except ScaleEstimationError as error:
            logger.warning("no metric scale: %s", error)
            return {"source": source.name, "error": str(error)}
        apply_scale(model, estimate.scale)
        logger.info("metric scale %.4g m/unit from %s depth (spread %.1f %% over %d images)",
                    estimate.scale, source.name, 100 * estimate.spread, estimate.num_images)
        return {"source": source.name, **estimate.to_dict()}

    def write_model(self, model: pycolmap.Reconstruction) -> None:
        """sparse/0 (and points.ply) replaced atomically: written aside, then renamed."""
        staging = self.model_path.with_name("0.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.write(staging)
        if self.text:
            model.write_text(staging)
        if self.model_path.exists():
            shutil.rmtree(self.model_path)
        os.replace(staging, self.model_path)
        ply = self.output_dir / "points.ply.tmp"
        model.export_PLY(str(ply))
        os.replace(ply, self.output_dir / "points.ply")

    def build_front_end(self) -> Path:
        """Every stage up to the COLMAP database (images, priors, features, pairs, matches)."""
        self.find_images()
        self.compute_priors()
        self.extract()
        self.select_pairs()
        self.match()
        self.build_database()
        return self.database_path

    def draw(self, model: pycolmap.Reconstruction) -> list[Path]:
        """Pictures of the result (top view of the model, match plots of the strongest pairs)."""
        if not self.database_path.exists() or not self.matches_path.exists():
            return []
        return self.timed("pictures", write_run_pictures, model, self.output_dir, self.image_dir,
                          self.database_path, self.features_path, self.matches_path)

    # Bookkeeping.
    def read_state(self) -> dict[str, Any]:
        path = self.output_dir / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def write_state(self, **entries: Any) -> None:
        state = {**self.read_state(), **entries}
        write_json(self.output_dir / STATE_FILE, state)

    def report(self, model: pycolmap.Reconstruction) -> dict[str, Any]:
        report = {
            "num_images": len(self.infos),
            "num_registered": model.num_reg_images(),
            "num_points": model.num_points3D(),
            "mean_track_length": model.compute_mean_track_length() if model.num_points3D() else 0.0,
            "mean_reprojection_error": model.compute_mean_reprojection_error() if model.num_points3D() else None,
            "num_pairs": len(self.pairs),
            "unregistered": sorted({i.name for i in self.infos} - {im.name for im in model.images.values()
                                                                     if im.has_pose}),
            "focal_priors": {name: {"focal": focal, "source": source} for name, (focal, source) in self.priors.items()},
            "metric_scale": self.metric_scale,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "computed": self.computed,
            "device": str(self.device),
            "config": self.config,
        }
        write_json(self.output_dir / "report.json", report)
        return report


def reconstruct(image_dir: str | os.PathLike, output_dir: str | os.PathLike, config: dict[str, Any],
                text: bool = False) -> tuple[pycolmap.Reconstruction, dict[str, Any]]:
    """Run every stage; return the model and the report (also written to report.json)."""
    pipeline = Pipeline(Path(image_dir), Path(output_dir), config, text=text)
    pipeline.build_front_end()
    model = pipeline.map()
    pipeline.draw(model)
    return model, pipeline.report(model)
