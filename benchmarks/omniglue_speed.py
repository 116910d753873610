"""OmniGlue speed: pairs per second of the full-size matcher at 1024 keypoints (random weights),
next to LightGlue (SuperPoint configuration, 9 layers, adaptive depth/width off) on the same
inputs in the same process as the reference, plus the cost of OmniGlue's parts (18 layers,
DINOv2 candidate selection, 100 Sinkhorn iterations) and, with ``--extractor``, of the
``omniglue_superpoint`` extractor (sp_v6 + DINOv2 ViT-B/14 at long side 630) per image.

    PYTHONPATH=. python benchmarks/omniglue_speed.py                       # CPU, 3 pairs
    PYTHONPATH=. python benchmarks/omniglue_speed.py --device cuda --pairs 20 --extractor
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import matchers
from matchers.omniglue.model import dino_candidates, log_optimal_transport


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per call over ``repeats`` calls, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats


def random_pair(n: int, device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A pair of ``n`` keypoints each in a 1024 x 768 image, OmniGlue's (256 + 768)-d descriptors."""
    size = torch.tensor([[1024.0, 768.0]])
    data = {}
    for i in "01":
        data["keypoints" + i] = torch.rand(1, n, 2, generator=generator) * size
        descriptors = torch.randn(1, n, 1024, generator=generator)
        descriptors[..., :256] = torch.nn.functional.normalize(descriptors[..., :256], dim=-1)
        data["descriptors" + i] = descriptors
        data["scores" + i] = torch.rand(1, n, generator=generator)
        data["image_size" + i] = size
    return {k: v.to(device) for k, v in data.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs per measurement")
    parser.add_argument("--extractor", action="store_true", help="also time the extractor on a 1024 x 768 image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = matchers.resolve_device(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    data = random_pair(args.keypoints, device, generator)

    omniglue = matchers.load("omniglue", device=device)
    lightglue = matchers.load("lightglue", device=device, features="superpoint", depth_confidence=-1.0,
                              width_confidence=-1.0, flash=device.type == "cuda")
    lg_data = {k: (v[..., :256] if k.startswith("descriptors") else v) for k, v in data.items()}
    with torch.inference_mode():
        rows = [("OmniGlue matcher (18 layers + OT)", timed(lambda: omniglue(data), device, args.pairs)),
                ("  graph: 18 layers + projection", timed(lambda: omniglue.describe(data), device, args.pairs)),
                ("  DINOv2 candidate selection", timed(lambda: dino_candidates(data["descriptors0"][..., 256:],
                                                                             data["descriptors1"][..., 256:]),
                                                       device, args.pairs))]
        scores = torch.randn(1, args.keypoints, args.keypoints, device=device)
        rows.append(("  Sinkhorn, 100 iterations", timed(lambda: log_optimal_transport(scores, omniglue.bin_score, 100),
                                                         device, args.pairs)))
        rows.append(("LightGlue reference (9 layers)", timed(lambda: lightglue(lg_data), device, args.pairs)))
        if args.extractor:
            extractor = matchers.load("omniglue_superpoint", device=device)
            image = torch.rand(1, 3, 768, 1024, generator=generator).to(device)
            rows.append(("omniglue_superpoint extractor, per image", timed(lambda: extractor({"image": image}),
                                                                            device, max(1, args.pairs // 2))))
    reference = rows[4][1][0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"OmniGlue speed at {args.keypoints} keypoints per image on {name} (random weights, fp32)")
    print(f"{'':44s} {'wall s':>9s} {'cpu s':>9s} {'per s':>9s} {'x LightGlue':>12s}")
    for label, (wall, cpu) in rows:
        print(f"{label:44s} {wall:9.4f} {cpu:9.4f} {1 / wall:9.2f} {wall / reference:12.2f}")
    print(f"pairs per second (OmniGlue matcher): {1 / rows[0][1][0]:.2f}")


if __name__ == "__main__":
    main()
