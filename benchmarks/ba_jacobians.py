"""Analytic vs batched forward-mode autodiff Jacobians in recon.ba (same process, same problem).

Times one full linearization (residuals + camera/point Jacobians of every observation) both ways
and checks they agree; recon.ba uses the faster one (``BAOptions.jacobian``, default analytic).

    PYTHONPATH=. python benchmarks/ba_jacobians.py [--threads 2] [--device cpu] [--problem problem-49-7776-pre.txt]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see ba_bal.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.ba import BAOptions, read_bal  # noqa: E402
from recon.ba.solver import State, Structure, _analytic_jacobians, _autodiff_jacobians, resolve_device  # noqa: E402

SHARED = Path(os.environ.get("RECON_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def best_time(fn, device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--problem", default="problem-49-7776-pre.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    problem = read_bal(SHARED / "data" / "bal" / args.problem).to(device)
    st = Structure(problem, BAOptions(device=str(device)))
    x = State(problem.rotations, problem.translations, problem.camera_params, problem.points)
    analytic = _analytic_jacobians(st, x)
    autodiff = _autodiff_jacobians(st, x)
    diff = max(float(((a - b).abs() / b.abs().amax().clamp_min(1e-12)).max()) for a, b in zip(analytic, autodiff))
    t_an = best_time(lambda: _analytic_jacobians(st, x), device)
    t_ad = best_time(lambda: _autodiff_jacobians(st, x), device)
    print(f"{args.problem} on {device} ({args.threads} threads), {problem.num_observations} observations: "
          f"analytic {1e3 * t_an:.1f} ms, autodiff {1e3 * t_ad:.1f} ms ({t_ad / t_an:.1f}x), max rel. difference {diff:.1e}")


if __name__ == "__main__":
    main()
