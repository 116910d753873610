"""What keeping large freed allocations in the heap (``recon.heap``) buys, A/B.

glibc's allocator state is per process, so each measurement runs in a fresh subprocess: the
workload with ``reuse_freed_memory()`` switched off (glibc's defaults) and on, alternately, at
each thread count; the best of ``--repeats`` timed runs after one warm-up. Workloads:

* ``ba`` - recon.ba on BAL ``problem-49-7776-pre.txt``, 20 LM iterations (dense Schur);
* ``nn`` - one 8k x 8k mutual nearest-neighbour + ratio match of random 128-D descriptors.

Prints seconds off / on and the speed-up per workload and thread count.

    PYTHONPATH=. python benchmarks/heap_reuse.py [--threads 1 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", ROOT.parent / "shared"))


def ba_workload():
    from recon.ba import BAOptions, read_bal, solve

    problem = read_bal(SHARED / "data" / "bal" / "problem-49-7776-pre.txt")
    options = BAOptions(device="cpu", function_tolerance=1e-8, gradient_tolerance=1e-10, parameter_tolerance=1e-8,
                        max_num_iterations=20)
    return lambda: solve(problem, options)


def nn_workload():
    import torch

    import matchers

    model = matchers.load("nearest_neighbor", ratio_threshold=0.8, mutual_check=True)
    generator = torch.Generator().manual_seed(0)
    descriptors = [torch.nn.functional.normalize(torch.randn(1, 8000, 128, generator=generator), dim=-1)
                   for _ in range(2)]
    data = {"descriptors0": descriptors[0], "descriptors1": descriptors[1],
            "keypoints0": torch.rand(1, 8000, 2, generator=generator),
            "keypoints1": torch.rand(1, 8000, 2, generator=generator)}

    def run():
        with torch.inference_mode():
            model(data)
    return run


WORKLOADS = {"ba": ba_workload, "nn": nn_workload}


def worker(workload: str, reuse: bool, threads: int, repeats: int) -> None:
    """One measurement in this (fresh) process; prints the best time as JSON."""
    import torch

    import recon.ba.solver as solver
    from recon.heap import reuse_freed_memory

    torch.set_num_threads(threads)
    if not reuse:  # the solver enters the context itself: make it a no-op there too
        solver.reuse_freed_memory = lambda: contextlib.nullcontext()
    run = WORKLOADS[workload]()
    context = reuse_freed_memory() if reuse else contextlib.nullcontext()
    with context:
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": min(times)}))


def measure(workload: str, reuse: bool, threads: int, repeats: int) -> float:
    command = [sys.executable, __file__, "--worker", workload, "--reuse", str(int(reuse)),
               "--threads", str(threads), "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--worker", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--reuse", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, bool(args.reuse), args.threads[0], args.repeats)
        return
    print(f"{'workload':>8} {'threads':>7} {'off s':>8} {'on s':>8} {'speed-up':>9}")
    for workload in args.workloads:
        for threads in args.threads:
            off = measure(workload, False, threads, args.repeats)
            on = measure(workload, True, threads, args.repeats)
            print(f"{workload:>8} {threads:>7} {off:>8.3f} {on:>8.3f} {off / on:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
