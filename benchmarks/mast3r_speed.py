"""MASt3R speed and memory: the full-size network (random weights) at 512 px.

Measured in one process on one device:
- encoder time per image; decoder + heads for a pair, both directions (MASt3R-SfM's symmetric
  decoding); reciprocal matching + anchoring; symmetric pairs per second with cached encodings;
- peak memory (CPU: process peak RSS; CUDA: peak allocated);
- reading an image's encoder tokens back from the run's token file (what the matcher does after
  the MASt3R pair graph encoded the image) versus encoding it again;
- the cost of N images over a pair graph with one encoder pass per image (``EncoderCache``) versus
  the reference behaviour (both images re-encoded for every pair): from the measured unit costs,
  and, with ``--compare``, measured end to end on the complete graph of ``--images`` images.

    PYTHONPATH=. python benchmarks/mast3r_speed.py                       # 2 images, 1 pair, CPU
    PYTHONPATH=. python benchmarks/mast3r_speed.py --images 3 --compare  # + measured N-image runs
    PYTHONPATH=. python benchmarks/mast3r_speed.py --device cuda --images 8 --compare
"""
from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
import time
from pathlib import Path

import torch

import matchers
from matchers.mast3r.matching import (EncoderCache, PreparedImage, anchor_matches_from_predictions, match_pair,
                                      symmetric_predictions)
from recon.graph.tokens import TokenCache


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


CPU_SECONDS: dict[str, float] = {}  # process CPU time of each timed call, by label


def timed(fn, device: torch.device, label: str = ""):
    """(fn(), wall seconds); the process CPU seconds go to CPU_SECONDS[label] (on a shared CPU
    machine the wall time includes waiting for cores, the CPU time does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    CPU_SECONDS[label] = time.process_time() - cpu
    return out, time.perf_counter() - start


def random_images(n: int, height: int, width: int, seed: int) -> dict[str, PreparedImage]:
    g = torch.Generator().manual_seed(seed)
    return {f"img{i}": PreparedImage(torch.rand(1, 3, height, width, generator=g) * 2 - 1, (width, height),
                                     (width, height), (0, 0)) for i in range(n)}


def compare_graph(model, images: dict[str, PreparedImage], device: torch.device) -> tuple[float, float]:
    """Measured seconds for the complete graph: (encode once per image, re-encode per pair)."""
    pairs = list(itertools.combinations(images, 2))
    cache = EncoderCache(model)

    def cached_run():
        cache.encode_all(images, batch_size=1)
        return [match_pair(model, cache(x, images[x]), cache(y, images[y])) for x, y in pairs]

    def reference_pair(x: str, y: str):  # official symmetric_inference: one encoder batch per pair
        both = model.encode(torch.cat((images[x].img, images[y].img)).to(device))
        return match_pair(model, both._replace(feat=both.feat[:1], pos=both.pos[:1]),
                          both._replace(feat=both.feat[1:], pos=both.pos[1:]))

    _, t_cached = timed(cached_run, device)
    _, t_reference = timed(lambda: [reference_pair(x, y) for x, y in pairs], device)
    return t_cached, t_reference


def token_file_read_time(cache: EncoderCache, images: dict[str, PreparedImage], device: torch.device) -> float:
    """Seconds per image for the matcher to take an image's encoding from the run's token file
    (``mast3r-tokens.h5``, written by the pair graph) instead of running the encoder again."""
    with tempfile.TemporaryDirectory() as folder:
        tokens = TokenCache(Path(folder) / "mast3r-tokens.h5", lambda name: cache.cache[name].feat[0])
        tokens.fill(list(images))
        reader = EncoderCache(cache.model)
        _, seconds = timed(lambda: [reader.add(n, tokens.tokens(n), images[n].size) for n in tokens.cached(list(images))],
                           device, "read")
    CPU_SECONDS["read"] /= len(images)
    return seconds / len(images)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images encoded for the unit costs / --compare")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--compare", action="store_true", help="also measure the complete graph both ways")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = matchers.resolve_device(args.device)
    model, t_build = timed(lambda: matchers.load("mast3r", device=device), device)
    n_params = sum(p.numel() for p in model.parameters())
    mem_weights = peak_memory_gb(device)
    images = random_images(max(args.images, 2), args.height, args.width, args.seed)
    print(f"MASt3R ViT-L/ViT-B, {n_params / 1e6:.1f} M parameters, random weights, {device}, "
          f"{torch.get_num_threads()} CPU threads, {args.width}x{args.height} (built in {t_build:.1f} s)")

    small = model.encode(torch.zeros(1, 3, 64, 64, device=device))  # one-time kernel set-up, untimed
    model.decode_pair(small, small)

    cache = EncoderCache(model)
    _, t_encode_all = timed(lambda: cache.encode_all(images, batch_size=1), device, "encode")
    t_enc = t_encode_all / len(images)
    CPU_SECONDS["encode"] /= len(images)
    t_read = token_file_read_time(cache, images, device)
    enc0, enc1 = (cache(n, images[n]) for n in list(images)[:2])
    res, t_decode = timed(lambda: symmetric_predictions(model, enc0, enc1), device, "decode")
    matches, t_match = timed(lambda: anchor_matches_from_predictions(res), device, "match")
    t_pair = t_decode + t_match
    CPU_SECONDS["pair"] = CPU_SECONDS["decode"] + CPU_SECONDS["match"]
    mem_peak = peak_memory_gb(device)

    print(f"\n{'stage':44s} {'wall s':>9s} {'per second':>11s} {'CPU s':>9s}")
    for name, t, label in (("encoder, per image", t_enc, "encode"), ("decoder + heads, pair both ways", t_decode, "decode"),
                           ("reciprocal matching + anchors (4 dirs)", t_match, "match"),
                           ("symmetric pair from cached encodings", t_pair, "pair"),
                           ("tokens from the token file, per image", t_read, "read")):
        print(f"{name:44s} {t:9.3f} {1 / t:11.4f} {CPU_SECONDS[label]:9.3f}")
    print(f"({len(matches.ids0)} anchor matches on random weights)")
    mem_label = "peak allocated" if device.type == "cuda" else "peak RSS"
    print(f"memory ({mem_label}): {mem_weights:.2f} GB after building the model, {mem_peak:.2f} GB after a pair")

    print("\nN images, cost from the measured unit costs (cache: N enc + P pairs; reference: P (2 enc + pair)):")
    print(f"  {'N':>5s} {'graph':>12s} {'pairs':>7s} {'cache (s)':>10s} {'reference (s)':>14s} {'speed-up':>9s}")
    for n in (3, 50, 200, 1000):
        for graph, n_pairs in (("complete", n * (n - 1) // 2), ("kNN k=10", n * 10)):
            if n_pairs > n * (n - 1) // 2:
                continue
            cached = n * t_enc + n_pairs * t_pair
            reference = n_pairs * (2 * t_enc + t_pair)
            print(f"  {n:5d} {graph:>12s} {n_pairs:7d} {cached:10.0f} {reference:14.0f} {reference / cached:9.2f}")

    if args.compare:
        t_cached, t_reference = compare_graph(model, images, device)
        n = len(images)
        print(f"\nmeasured, N = {n} images, complete graph ({n * (n - 1) // 2} pairs):")
        print(f"  encode once per image (cache):  {t_cached:8.1f} s")
        print(f"  re-encode per pair (reference): {t_reference:8.1f} s   speed-up x{t_reference / t_cached:.2f}")


if __name__ == "__main__":
    main()
