"""Depth Pro speed and memory: seconds per image and peak memory of the full network.

Random weights (the architecture of the released model, 952M parameters), one image of
``--height`` x ``--width`` pixels (default 1536 x 1536, 2.36 MP) through the whole ``forward``
(resize to 1536, both encoders, decoder, depth head, FOV head, metric depth). Float32 on CPU,
float16 on CUDA, as in the pipeline.

The table splits the time by component (forward hooks) and compares with a reference run in the
same process: one DINOv2-L/16 pass on a 384 x 384 image, the backbone Depth Pro runs 37 times
(35 patch tiles, the global image, the FOV image). The Depth Pro paper reports 0.3 s for a
2.25 MP image on a V100 GPU; that ratio is printed for GPU runs only.

    PYTHONPATH=. python benchmarks/depth_pro_speed.py                 # 1 image on CPU
    PYTHONPATH=. python benchmarks/depth_pro_speed.py --device cuda --images 5
"""
from __future__ import annotations

import argparse
import resource
import time
from contextlib import contextmanager

import torch

import matchers
from matchers.backbones.dinov2 import DinoVisionTransformer

PAPER_SECONDS = 0.3  # Depth Pro paper: 2.25 MP on a V100


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU allocation, or the process's peak resident set on CPU (weights included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@contextmanager
def component_timer(model: torch.nn.Module, device: torch.device, totals: dict[str, float]):
    """Accumulate wall time per top-level component (encoder, decoder, head, fov) via hooks."""
    starts: dict[str, float] = {}
    handles = []
    for name in ("encoder", "decoder", "head", "fov"):
        module = getattr(model, name)

        def before(_module, _inputs, name=name):
            synchronize(device)
            starts[name] = time.perf_counter()

        def after(_module, _inputs, _output, name=name):
            synchronize(device)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def time_reference_vit(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Seconds for one DINOv2-L/16 forward on one 384 x 384 image (Depth Pro's ViT)."""
    vit = DinoVisionTransformer(img_size=384, patch_size=16, init_values=1e-5, mask_token=False)
    vit = vit.to(device=device, dtype=dtype).eval()
    x = torch.randn(1, 3, 384, 384, device=device, dtype=dtype)
    with torch.no_grad():
        vit.forward_features(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            vit.forward_features(x)
        synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    del vit
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--images", type=int, default=1, help="timed images (after one warm-up on GPU)")
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = matchers.resolve_device(args.device)

    start = time.perf_counter()
    model = matchers.load("depth_pro", device=device)
    build_seconds = time.perf_counter() - start
    dtype = model.inference_dtype(device)
    model.to(dtype)
    parameters = sum(p.numel() for p in model.parameters())
    memory_after_build = peak_memory_gib(device)
    image = torch.rand(1, 3, args.height, args.width, device=device)

    with torch.no_grad():
        if device.type == "cuda":
            model({"image": image})  # warm-up: kernels, cuDNN autotuning
            torch.cuda.reset_peak_memory_stats(device)
        totals: dict[str, float] = {}
        with component_timer(model, device, totals):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.images):
                out = model({"image": image})
            synchronize(device)
            seconds = (time.perf_counter() - start) / args.images
    peak = peak_memory_gib(device)
    vit_seconds = time_reference_vit(device, dtype, repeats=1 if device.type == "cpu" else 10)

    print(f"Depth Pro, random weights, {parameters / 1e6:.1f}M parameters, {str(dtype).removeprefix('torch.')}, "
          f"device {device}, {torch.get_num_threads()} CPU threads, image {args.width}x{args.height} "
          f"({args.width * args.height / 1e6:.2f} MP), {args.images} image(s); model built in {build_seconds:.1f} s")
    print(f"predicted FOV {out['fov_deg'].item():.1f} deg (random weights)")
    print(f"{'component':<28}{'s / image':>12}{'share':>8}")
    for name, total in totals.items():
        print(f"{name:<28}{total / args.images:>12.3f}{total / args.images / seconds:>8.1%}")
    print(f"{'total (forward + resize)':<28}{seconds:>12.3f}{1:>8.0%}")
    print(f"{'reference: 1 ViT-L/16 @384':<28}{vit_seconds:>12.3f}   Depth Pro = {seconds / vit_seconds:.1f} ViT passes")
    if device.type == "cuda":
        print(f"{'paper (V100, 2.25 MP)':<28}{PAPER_SECONDS:>12.3f}   ours / paper = {seconds / PAPER_SECONDS:.2f}")
    memory_kind = "GPU max allocated" if device.type == "cuda" else "process peak RSS"
    print(f"memory ({memory_kind}): after building {memory_after_build:.2f} GiB, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
