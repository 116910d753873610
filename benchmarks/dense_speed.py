"""Dense matcher speed and peak memory: RoMa, GIM_DKM and GIM_LoFTR at full size, random weights.

Each model runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its
own; the table gives wall seconds per pair of ``forward`` (match both passes + sampling), pairs
per second, each model's time relative to RoMa (the reference run), the CPU seconds per pair
(all threads; the honest figure on a shared machine, where wall time depends on the load), and
the resident memory after building the model and its peak during matching. Images are random 768 x 1024 RGB, resized by
the models to their official resolutions (RoMa 560 -> 864, GIM_DKM 672x896 -> 1152x1536); GIM_LoFTR matches
each image at its own size floored to multiples of 8 (here 768 x 1024 itself: 12,288 coarse cells per image, so
its coarse score matrix alone is 12,288^2 floats = 0.6 GB), shown as "native".

    PYTHONPATH=. python benchmarks/dense_speed.py               # 1 pair per model, CPU
    PYTHONPATH=. python benchmarks/dense_speed.py --pairs 3 --device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def worker(name: str, pairs: int, device: str, threads: int) -> dict:
    import torch

    import matchers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = matchers.load(name, weights=None, device=device)
    built_mb = rss_mb()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, 768, 1024, generator=g) for _ in range(2)]
    times, cpu_times, matches = [], [], 0
    for _ in range(pairs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = model({"image0": images[0].to(device), "image1": images[1].to(device)})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        matches = len(out["scores"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None
    return {"model": name, "conf": {k: model.conf.get(k) for k in ("coarse_res", "upsample_res")},
            "seconds_per_pair": sum(times) / len(times), "cpu_seconds_per_pair": sum(cpu_times) / len(cpu_times),
            "threads": torch.get_num_threads(), "pairs": pairs, "matches": matches,
            "rss_after_build_mb": built_mb, "peak_rss_mb": peak_mb, "cuda_peak_mb": cuda_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1, help="pairs timed per model (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--models", nargs="+", default=["roma_outdoor", "gim_dkm", "gim_loftr"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.pairs, args.device, args.threads)))
        return
    print(f"device={args.device} pairs/model={args.pairs} input 768x1024, random weights")
    print(f"{'model':20} {'coarse':>10} {'upsample':>11} {'s/pair':>8} {'pairs/s':>8} {'x ref':>6} "
          f"{'CPU s/pair':>10} {'RSS built MiB':>14} {'peak RSS MiB':>13} {'matches':>8}", flush=True)
    reference = None
    for name in args.models:  # each row is printed as soon as its model finishes
        command = [sys.executable, __file__, "--worker", name, "--pairs", str(args.pairs), "--device", args.device,
                   "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
        row = json.loads(result.stdout.strip().splitlines()[-1])
        reference = reference or row["seconds_per_pair"]
        coarse, upsample = ("x".join(map(str, row["conf"][k])) if row["conf"][k] else "native"
                            for k in ("coarse_res", "upsample_res"))
        line = (f"{row['model']:20} {coarse:>10} {upsample:>11} {row['seconds_per_pair']:8.1f} "
                f"{1 / row['seconds_per_pair']:8.4f} {row['seconds_per_pair'] / reference:6.2f} "
                f"{row['cpu_seconds_per_pair']:10.1f} "
                f"{row['rss_after_build_mb']:14.0f} {row['peak_rss_mb']:13.0f} {row['matches']:8d}")
        if row["cuda_peak_mb"] is not None:
            line += f"  cuda peak {row['cuda_peak_mb']:.0f} MiB"
        print(line, flush=True)

if __name__ == "__main__":
    main()
