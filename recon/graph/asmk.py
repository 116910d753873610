"""ASMK (aggregated selective match kernel) image similarity, as MASt3R-SfM uses it for pair selection.

Our own torch + faiss implementation of the method of Tolias et al. (ECCV 2020 / ICCV 2013) with the
exact definitions of the official ``jenicek/asmk`` package and the parameters that
``mast3r.retrieval.processor.Retriever`` hard-codes (checked against
``shared/fixtures/mast3r/asmk_io.npz`` to 1e-5):

* **Codebook**: K visual words, k-means on local descriptors (faiss, 10 iterations), or loaded
  from the official codebook pickle (``{'type': 'Codebook', 'params': {'size': K},
  'state': {'centroids': float32 (K, D)}}``).
* **Quantisation with multiple assignment**: each descriptor goes to its ``m`` nearest words (L2),
  ``m = 1`` on the database side and ``m = 5`` on the query side in MASt3R.
* **Aggregation**: per image and word w, ``V_w = sum (x - c_w)`` over the image's descriptors that
  have w among their assignments; each image has at most one entry per word.
* **Binarisation**: ``b = V_w > 0``. The official package packs bits MSB-first into uint32 and
  normalises Hamming distances by ``32 * ceil(D / 32)``, so for D not a multiple of 32 the padding
  bits count as agreeing bits. We keep bits packed in bytes and compute the same number as
  ``u = (pad + <s_q, s_d>) / (D + pad)`` with ``s`` the +-1 signs and ``pad = 32 ceil(D/32) - D``
  (``u = 1 - 2 h``), which lets a matrix product do the Hamming work.
* **Selective kernel**: ``k(u) = u ** alpha`` where ``u >= threshold`` else 0 (alpha 3, threshold 0).
* **Score**: ``S(q, d) = sum over shared words of idf_w k(u_w) / sqrt(n_d) / sqrt(n_q)``, where
  ``n_x`` sums idf over the image's words (its word count without idf, MASt3R's ``use_idf=False``)
  and ``idf_w = log(N / count_w) ** 2`` for words present in the database (1 otherwise).
  ``S`` is not symmetric: the query side uses more assignments.

The inverted file (:func:`asmk_similarity`) only ever compares aggregated entries that share a word:
entries are sorted by word, words are batched by size, and each batch is one padded ``bmm``. The
cost is ``sum_w n_query(w) * n_db(w) * D``, so with a codebook that grows with the collection
(:func:`auto_codebook_size`) it grows about linearly in the number of images instead of with the
``N^2`` dense comparison. On CPU a large codebook is searched through a faiss inverted index over
the words (``probes`` coarse cells, see :class:`Codebook`); on CUDA and for small codebooks the
word search is an exact flat search in torch.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

#: bits of the official packing unit; Hamming distances are normalised by a multiple of it
PACK_BITS = 32


def auto_codebook_size(num_tokens: int) -> int:
    """Words for a collection of ``num_tokens`` descriptors: one word per ~64 descriptors,
    rounded to a power of two, within [256, 65536] (65536 is MASt3R's official '64k').

    Growing the vocabulary with the collection keeps the inverted-file lists short, which is
    what makes the similarity cost grow roughly linearly with the number of images.
    """
    size = 2 ** round(math.log2(max(num_tokens, 1) / 64))
    return int(min(max(size, 256), 65536))


def _kmeans(points: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """faiss k-means (the official asmk call: ``faiss.Clustering``, L2, ``niter`` iterations)."""
    clustering = faiss.Clustering(points.shape[1], k)
    clustering.niter = niter
    clustering.seed = seed
    clustering.verbose = False
    clustering.max_points_per_centroid = 1 << 30  # we subsample ourselves, reproducibly
    index = faiss.IndexFlatL2(points.shape[1])
    clustering.train(np.ascontiguousarray(points, dtype=np.float32), index)
    return faiss.vector_float_to_array(clustering.centroids).reshape(k, points.shape[1])


class _SafeCodebookUnpickler(pickle.Unpickler):
    """Unpickler for the official codebook file: only numpy array reconstruction is allowed.

    The official pickle is a plain dict holding one numpy array; anything else (a class from the
    asmk package, a callable) is refused, so loading a downloaded file cannot run code.
    """

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"codebook pickle refers to {module}.{name}, which a codebook never needs")
        return super().find_class(module, name)


@dataclass
class Codebook:
    """Visual words ``centroids`` (K, D) float32 with an optional coarse index for fast CPU search.

    ``coarse`` (C, D): when set (large codebooks), CPU quantisation uses a faiss ``IndexIVFFlat``
    whose lists hold the words, searched in the ``probes`` nearest coarse cells: the returned words
    are the exact nearest among the words of those cells (exact for ``probes >= C``). CUDA always
    searches all words exactly.
    """

    centroids: torch.Tensor
    coarse: torch.Tensor | None = None
    probes: int = 8

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @classmethod
    def train(cls, descriptors: torch.Tensor, size: int, *, coarse_size: int = 0, probes: int = 8,
              niter: int = 10, points_per_word: int = 64, seed: int = 0) -> "Codebook":
        """k-means codebook from ``descriptors`` (M, D), subsampled to ``points_per_word * size``.

        ``coarse_size == 0`` trains ``size`` words with one flat k-means (the official method).
        ``coarse_size = C > 0`` trains a two-level vocabulary: C coarse centroids, then
        ``size // C`` words by k-means inside each coarse cell. The training cost then grows with
        ``size / C`` instead of ``size``, which is what makes 32k-word vocabularies trainable on
        two CPU cores; the words are searched through the coarse cells (see the class doc).
        """
        points = descriptors.detach().float().cpu().numpy()
        if points.shape[0] < size:
            raise ValueError(f"codebook of {size} words needs at least {size} descriptors, got {points.shape[0]}")
        rng = np.random.default_rng(seed)
        budget = points_per_word * size
        if points.shape[0] > budget:
            points = points[np.sort(rng.choice(points.shape[0], budget, replace=False))]
        if coarse_size <= 0:
            return cls(torch.from_numpy(_kmeans(points, size, niter, seed)))
        coarse = _kmeans(points, coarse_size, niter, seed)
        _, cell = faiss.knn(points, coarse, 1)
        words_per_cell = max(size // coarse_size, 1)
        words = []
        for c in tqdm(range(coarse_size), desc="codebook cells", leave=False, disable=coarse_size < 64):
            members = points[cell[:, 0] == c]
            k = min(words_per_cell, len(members))
            if k > 0:
                words.append(_kmeans(members, k, niter, seed + c) if k < len(members) else members)
        return cls(torch.from_numpy(np.concatenate(words)), torch.from_numpy(coarse), probes)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Codebook":
        """Official asmk codebook pickle (see module doc), read with a numpy-only unpickler."""
        with open(path, "rb") as handle:
            state = _SafeCodebookUnpickler(handle).load()
        if not isinstance(state, dict) or state.get("type") != "Codebook":
            raise ValueError(f"{path} is not an asmk codebook pickle (expected type 'Codebook')")
        centroids = np.asarray(state["state"]["centroids"], dtype=np.float32)
        return cls(torch.from_numpy(centroids))

    def save(self, path: str | os.PathLike) -> None:
        """Write the official pickle layout (plain dict + numpy array), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        state = {"type": "Codebook", "params": {"size": self.size},
                 "state": {"centroids": self.centroids.cpu().numpy()}}
        with open(tmp, "wb") as handle:
            pickle.dump(state, handle)
        os.replace(tmp, path)

    def quantize(self, descriptors: torch.Tensor, assignments: int, chunk: int = 65536) -> torch.Tensor:
        """The ``assignments`` nearest words (L2) of each descriptor, closest first.

        descriptors: (M, D) -> (M, assignments) long, on the descriptors' device.
        """
        if assignments > self.size:
            raise ValueError(f"{assignments} assignments need a codebook of at least that many words, got {self.size}")
        device = descriptors.device
        if device.type == "cpu" and self.coarse is not None:
            return self._quantize_ivf(descriptors, assignments)
        centroids = self.centroids.to(device)
        squared = (centroids * centroids).sum(1)
        out = [torch.topk(squared - 2 * part.float() @ centroids.T, assignments, dim=1, largest=False).indices
               for part in descriptors.split(chunk)]
        return torch.cat(out) if out else torch.empty(0, assignments, dtype=torch.long, device=device)

    def _quantize_ivf(self, descriptors: torch.Tensor, assignments: int) -> torch.Tensor:
        coarse = self.coarse.numpy()
        quantizer = faiss.IndexFlatL2(self.dim)
        quantizer.add(coarse)
        index = faiss.IndexIVFFlat(quantizer, self.dim, coarse.shape[0])
        index.is_trained = True
        index.add(self.centroids.numpy())
        index.nprobe = min(self.probes, coarse.shape[0])
        _, words = index.search(np.ascontiguousarray(descriptors.float().numpy()), assignments)
        if (words < 0).any():
            raise RuntimeError("fewer words than assignments in the probed cells; raise codebook probes")
        return torch.from_numpy(words).long()


@dataclass
class AggregatedSet:
    """Binarised aggregated residuals: one entry per (image, word) pair present.

    words: (E,) long; images: (E,) long; bits: (E, ceil(D/8)) uint8, bit j of dimension
    ``8 * byte + (7 - j)`` (MSB first, as the official packing); dim: D.
    """

    words: torch.Tensor
    images: torch.Tensor
    bits: torch.Tensor
    dim: int

    @staticmethod
    def cat(parts: list["AggregatedSet"]) -> "AggregatedSet":
        return AggregatedSet(torch.cat([p.words for p in parts]), torch.cat([p.images for p in parts]),
                             torch.cat([p.bits for p in parts]), parts[0].dim)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(positive: torch.Tensor) -> torch.Tensor:
    """(E, D) bool -> (E, ceil(D/8)) uint8, MSB first, the last byte zero-padded at the end."""
    pad = (-positive.shape[1]) % 8
    padded = torch.nn.functional.pad(positive.to(torch.uint8), (0, pad))
    weights = _BIT_WEIGHTS.to(positive.device)
    return (padded.view(positive.shape[0], -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_signs(bits: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., ceil(D/8)) uint8 -> (..., D) float32 with +1 for a set bit and -1 otherwise."""
    weights = _BIT_WEIGHTS.to(bits.device)
    unpacked = (bits.unsqueeze(-1) & weights) > 0
    signs = unpacked.flatten(-2)[..., :dim].float()
    return signs * 2 - 1


def aggregate(descriptors: torch.Tensor, word_ids: torch.Tensor, image_ids: torch.Tensor,
              centroids: torch.Tensor) -> AggregatedSet:
    """Binarised residual per (image, word): ``V_w = sum (x - c_w) > 0``.

    descriptors: (M, D); word_ids: (M, m) assignments of each descriptor (a descriptor adds its
    residual to each of its m words); image_ids: (M,). Entries come out sorted by (image, word),
    like the official per-image ``np.unique`` order.
    """
    m = word_ids.shape[1]
    num_words = centroids.shape[0]
    token = torch.arange(descriptors.shape[0], device=descriptors.device).repeat_interleave(m)
    words = word_ids.reshape(-1)
    keys, inverse = torch.unique(image_ids[token] * num_words + words, return_inverse=True)
    residuals = descriptors.float()[token] - centroids.to(descriptors.device)[words]
    summed = torch.zeros(len(keys), descriptors.shape[1], device=descriptors.device)
    summed.index_add_(0, inverse, residuals)
    return AggregatedSet(keys % num_words, keys // num_words, pack_bits(summed > 0), descriptors.shape[1])


def word_similarity(signs_q: torch.Tensor, signs_d: torch.Tensor, dim: int) -> torch.Tensor:
    """Official normalised Hamming similarity ``u = 1 - 2 h`` of +-1 sign vectors.

    signs_q: (W, A, D), signs_d: (W, B, D) -> (W, A, B); h is normalised by ``32 ceil(D/32)``
    bits like the official uint32 packing (padding bits agree).
    """
    pad = (-dim) % PACK_BITS
    return (torch.bmm(signs_q, signs_d.transpose(1, 2)) + pad) / (dim + pad)


def _batches(count_q: torch.Tensor, count_d: torch.Tensor, dim: int, budget: int) -> list[slice]:
    """Consecutive word ranges whose padded blocks (signs and products) stay within ``budget``."""
    slices, start = [], 0
    q, d = count_q.tolist(), count_d.tolist()
    hi_q = hi_d = 0
    for i in range(len(q)):
        hi_q, hi_d = max(hi_q, q[i]), max(hi_d, d[i])
        if (i - start + 1) * (hi_q * hi_d + (hi_q + hi_d) * dim) > budget and i > start:
            slices.append(slice(start, i))
            start, hi_q, hi_d = i, q[i], d[i]
    if len(q) > start:
        slices.append(slice(start, len(q)))
    return slices


def asmk_similarity(query: AggregatedSet, database: AggregatedSet, num_query: int, num_database: int,
                    num_words: int, *, alpha: float = 3.0, threshold: float = 0.0, use_idf: bool = False,
                    pair_budget: int = 1 << 23, progress: bool = False) -> torch.Tensor:
    """ASMK scores ``S[q, d]`` (num_query, num_database) float32 through an inverted file.

    Only entries that share a word are compared; words are processed in batches of similar list
    sizes, each batch one padded ``bmm`` of +-1 signs holding at most ``pair_budget`` products.
    """
    device = query.bits.device
    count_q = torch.bincount(query.words, minlength=num_words)
    count_d = torch.bincount(database.words, minlength=num_words)
    idf = torch.ones(num_words, device=device)
    if use_idf:
        present = count_d > 0
        idf[present] = torch.log(num_database / count_d[present].float()) ** 2
    norm_q = torch.zeros(num_query, device=device).index_add_(0, query.images, idf[query.words])
    norm_d = torch.zeros(num_database, device=device).index_add_(0, database.images, idf[database.words])

    order_q = torch.argsort(query.words, stable=True)
    order_d = torch.argsort(database.words, stable=True)
    start_q = torch.cumsum(count_q, 0) - count_q
    start_d = torch.cumsum(count_d, 0) - count_d
    shared = torch.nonzero((count_q > 0) & (count_d > 0)).squeeze(1)
    shared = shared[torch.argsort(count_q[shared] * count_d[shared])]  # similar sizes batch together

    scores = torch.zeros(num_query * num_database, device=device)
    batches = _batches(count_q[shared], count_d[shared], query.dim, pair_budget)
    for part in tqdm(batches, desc="ASMK inverted file", disable=not progress, leave=False):
        words = shared[part]
        rows_q = _gather_rows(order_q, start_q[words], count_q[words])
        rows_d = _gather_rows(order_d, start_d[words], count_d[words])
        u = word_similarity(unpack_signs(query.bits[rows_q.clamp(min=0)], query.dim),
                            unpack_signs(database.bits[rows_d.clamp(min=0)], database.dim), query.dim)
        keep = (rows_q[:, :, None] >= 0) & (rows_d[:, None, :] >= 0) & (u >= threshold)
        w, a, b = torch.nonzero(keep, as_tuple=True)
        values = u[w, a, b] ** alpha * idf[words[w]]
        target = query.images[rows_q[w, a]] * num_database + database.images[rows_d[w, b]]
        scores.index_add_(0, target, values)
    scores = scores.view(num_query, num_database)
    return scores / (norm_q.clamp(min=1e-12).sqrt()[:, None] * norm_d.clamp(min=1e-12).sqrt()[None, :])


def _gather_rows(order: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """(W, max count) indices into the entries of each word (sorted order), -1 past each count."""
    offsets = torch.arange(int(count.max()), device=order.device)
    valid = offsets[None, :] < count[:, None]
    rows = order[(start[:, None] + offsets[None, :]).clamp(max=len(order) - 1)]
    return torch.where(valid, rows, torch.full_like(rows, -1))


@dataclass
class ASMKParams:
    """MASt3R's ASMK settings (``Retriever``): 1 database / 5 query assignments, alpha 3, threshold 0."""

    database_assignments: int = 1
    query_assignments: int = 5
    alpha: float = 3.0
    threshold: float = 0.0
    use_idf: bool = False


def collection_similarity(descriptors: torch.Tensor, image_ids: torch.Tensor, num_images: int,
                          codebook: Codebook, params: ASMKParams = ASMKParams(),
                          chunk_images: int = 512, progress: bool = False) -> torch.Tensor:
    """ASMK similarity of a collection against itself (database = queries, as in MASt3R).

    descriptors: (M, D) all images' selected tokens; image_ids: (M,) in [0, num_images), sorted
    ascending (tokens grouped by image). Quantises once with ``max(assignments)`` words (the database side keeps the first
    column: nearest first), aggregates per block of images, then scores through the inverted file.
    Returns S (num_images, num_images) float32, rows = query.
    """
    assignments = max(params.query_assignments, params.database_assignments)
    words = codebook.quantize(descriptors, assignments)
    centroids = codebook.centroids.to(descriptors.device)
    query_parts, database_parts = [], []
    bounds = torch.searchsorted(image_ids, torch.arange(0, num_images + chunk_images, chunk_images,
                                                        device=image_ids.device).clamp(max=num_images))
    for lo, hi in tqdm(list(zip(bounds[:-1].tolist(), bounds[1:].tolist())), desc="ASMK aggregate",
                       disable=not progress, leave=False):
        if hi > lo:
            x, ids, w = descriptors[lo:hi], image_ids[lo:hi], words[lo:hi]
            query_parts.append(aggregate(x, w[:, :params.query_assignments], ids, centroids))
            database_parts.append(aggregate(x, w[:, :params.database_assignments], ids, centroids))
    if not query_parts:
        raise ValueError("no descriptors: every image has an empty token set")
    return asmk_similarity(AggregatedSet.cat(query_parts), AggregatedSet.cat(database_parts), num_images,
                           num_images, codebook.size, alpha=params.alpha, threshold=params.threshold,
                           use_idf=params.use_idf, progress=progress)
