"""Which database images a query is matched against.

One small interface, :class:`Retrieval` (``retrieve(query_name, k) -> database names, best
first``), so any image-retrieval method plugs in (the graph's ASMK retrieval, global descriptors).
Implemented here:

* :class:`ExhaustiveRetrieval` - every database image: exact, and the default for small maps.
* :class:`ListRetrieval` - an hloc retrieval file (``query db_name`` per line, best first).
* :class:`BagOfWordsRetrieval` - tf-idf bags of visual words of the local features already
  extracted (a k-means vocabulary of the database descriptors, cosine similarity), for maps
  too large to match every image.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from ..io.h5 import opened
from ..io.pairs import read_pairs

logger = logging.getLogger(__name__)
MAX_TRAINING_DESCRIPTORS = 200_000


class Retrieval(Protocol):
    def retrieve(self, query: str, k: int) -> list[str]:
        """Up to ``k`` database image names for ``query``, most similar first."""


class ExhaustiveRetrieval:
    """Every database image (``k`` is ignored: nothing is left out)."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    def retrieve(self, query: str, k: int) -> list[str]:
        return [name for name in self.names if name != query]


class ListRetrieval:
    """hloc's ``parse_retrieval``: the database images listed for each query, in file order."""

    def __init__(self, path: str | Path) -> None:
        self.lists: dict[str, list[str]] = defaultdict(list)
        for query, name in read_pairs(path):
            self.lists[query].append(name)

    def retrieve(self, query: str, k: int) -> list[str]:
        return self.lists.get(query, [])[:k] if k > 0 else list(self.lists.get(query, []))


class BagOfWordsRetrieval:
    """tf-idf bag-of-visual-words similarity on local descriptors.

    The vocabulary is a seeded k-means of a sample of the database descriptors (an equal share
    per image); each image is the L2-normalised histogram of its descriptors' nearest words
    weighted by ``idf = log(N_images / N_images_with_word)``; similarity is the dot product. The
    database is read image by image, twice, from one open file: memory holds the sample and the
    (N_images, V) histograms, never all descriptors.
    """

    def __init__(self, database_features: Path, names: list[str], query_features: Path,
                 vocabulary_size: int, seed: int = 0) -> None:
        self.names = list(names)
        self.query_features = Path(query_features)
        rng = np.random.default_rng(seed)
        share = max(1, MAX_TRAINING_DESCRIPTORS // max(len(names), 1))
        with h5py.File(database_features, "r") as features:
            sample = [_sample_rows(_descriptors(features, name), share, rng) for name in names]
            self.index = _vocabulary(np.concatenate(sample), vocabulary_size, seed)
            del sample
            counts = np.stack([self._counts(_descriptors(features, name)) for name in names])  # (N_db, V)
        self.idf = np.log(len(names) / np.maximum((counts > 0).sum(0), 1)).astype(np.float32)
        self.database = _normalise(counts * self.idf)

    def _counts(self, descriptors: np.ndarray) -> np.ndarray:
        """(V,) word counts of (N, D) descriptors."""
        _, words = self.index.search(np.ascontiguousarray(descriptors, dtype=np.float32), 1)
        return np.bincount(words[:, 0], minlength=self.index.ntotal).astype(np.float32)

    def retrieve(self, query: str, k: int) -> list[str]:
        vector = _normalise(self._counts(_descriptors(self.query_features, query))[None] * self.idf)[0]
        scores = self.database @ vector
        order = [i for i in np.argsort(-scores, kind="stable") if self.names[i] != query]
        return [self.names[i] for i in order[:k]]


def _descriptors(source: Path | h5py.File, name: str) -> np.ndarray:
    """(N, D) float32 descriptors of one image of an hloc features file (stored (D, N))."""
    with opened(source) as f:
        return f[name]["descriptors"][()].T.astype(np.float32)


def _sample_rows(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``count`` rows, drawn without replacement (seeded)."""
    return rows if len(rows) <= count else rows[rng.choice(len(rows), count, replace=False)]


def _vocabulary(descriptors: np.ndarray, size: int, seed: int):
    """A flat faiss index over ``size`` k-means centroids of the (sampled) descriptors."""
    import faiss  # here: loading it costs a second and logs its CPU probing, only bag of words needs it

    size = min(size, len(descriptors))
    kmeans = faiss.Kmeans(descriptors.shape[1], size, niter=20, seed=seed, verbose=False,
                          max_points_per_centroid=max(256, len(descriptors) // size + 1))
    kmeans.train(np.ascontiguousarray(descriptors))
    index = faiss.IndexFlatL2(descriptors.shape[1])
    index.add(kmeans.centroids)
    return index


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def make_retrieval(conf: dict[str, Any], names: list[str], database_features: Path, query_features: Path,
                   seed: int) -> Retrieval:
    """The configured retrieval (``localize.retrieval``): ``exhaustive``, ``bow``, or ``auto`` =
    exhaustive up to ``exhaustive_max`` database images, bag of words above."""
    choice = conf["retrieval"]
    if choice == "auto":
        choice = "exhaustive" if len(names) <= conf["exhaustive_max"] else "bow"
    if choice == "exhaustive":
        return ExhaustiveRetrieval(names)
    if choice == "bow":
        logger.info("bag-of-words retrieval: %d words over %d database images", conf["vocabulary_size"], len(names))
        return BagOfWordsRetrieval(database_features, names, query_features, conf["vocabulary_size"], seed)
    raise ValueError(f"localize.retrieval must be auto, exhaustive or bow, got '{choice}'")
