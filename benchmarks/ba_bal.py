"""recon.ba against pycolmap's Ceres bundle adjuster, in one process, on BAL problems.

Part 1 (BAL): for each BAL file, both solvers start from the same parameters with the same
objective (trivial loss; COLMAP zeroes behind-camera residuals and so do we), the same
tolerances (function 1e-8, gradient 1e-10, parameter 1e-8, at most 100 iterations) and the same
thread setting; Ceres uses SPARSE_SCHUR. Printed: initial and final cost of each, iterations,
wall time of each (problem setup included on both sides), the threads each ran on at most (recon
divides them by problem size: ``recon.ba.solver.thread_plan``) and the time ratio recon / Ceres.
With ``--repeat N`` (default 3) each solver runs N times on each problem in this process, from the
same start every time, the two taking turns; the reported run of each is its fastest and the
ratio is of the two bests (on a shared CPU one run of 0.2 s can be 50% slower than the next).
Targets: recon final cost <= Ceres final cost x (1 + 1e-4); recon time <= 0.5 x Ceres time.

Part 2 (scale): synthetic BAL-format problems (cameras along a street, 0.5 px noise, 1% gross
outliers, Huber loss with scale 2 px) with presets of about 0.1M, 1.3M and 5M observations. Per
device: time per LM iteration, total time, final cost, peak memory (CPU: peak RSS of a fresh
subprocess; CUDA: torch.cuda.max_memory_allocated) and on CUDA the achieved memory bandwidth as
a fraction of the device's measured copy bandwidth. Both solvers get function tolerance 1e-6 and
``--scale-iterations`` iterations there. ``--ceres-scale`` adds Ceres on the CPU for the
speed-up figure and the cost check, with ``--ceres-scale-solver``: SPARSE_SCHUR by default, the
exact steps recon takes too (on 1.3M both end at the same cost in the same 30 iterations), or
ITERATIVE_SCHUR + SCHUR_JACOBI, as COLMAP picks for many images, whose inexact steps can end in
another local minimum of the Huber objective (on 1.3M a lower one, 2.127e6 against 2.290e6).

    PYTHONPATH=. python benchmarks/ba_bal.py [--json] [--threads 2] [--repeat 3] [--scale 0.1M,1.3M] [--ceres-scale]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

# Threads that sleep instead of spinning at OpenMP barriers: on a shared (oversubscribed) CPU a
# spinning torch thread pool is ~10x slower (measured). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.ba import BAOptions, read_bal, solve, synthetic_preset, to_reconstruction  # noqa: E402

SHARED = Path(os.environ.get("RECON_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BAL_FILES = ["problem-49-7776-pre.txt", "problem-21-11315-pre.txt", "problem-49-1800-shrink-pre.txt"]
TOLERANCES = dict(function_tolerance=1e-8, gradient_tolerance=1e-10, parameter_tolerance=1e-8, max_num_iterations=100)


def run_ceres(problem, threads: int, solver: str, loss: str = "trivial", loss_scale: float = 1.0,
              tolerances: dict = TOLERANCES) -> dict:
    """pycolmap's default bundle adjuster (Ceres) on the problem's pycolmap twin."""
    import pycolmap

    pycolmap.logging.minloglevel = 2
    rec = to_reconstruction(problem)
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_principal_point = False
    ceres = options.ceres
    ceres.loss_function_type = getattr(pycolmap.LossFunctionType, loss.upper())
    ceres.loss_function_scale = loss_scale
    ceres.auto_select_solver_type = False
    ceres.min_num_residuals_for_cpu_multi_threading = 0
    so = ceres.solver_options
    so.linear_solver_type = getattr(type(so.linear_solver_type), solver)
    if solver == "ITERATIVE_SCHUR":
        so.preconditioner_type = getattr(type(so.preconditioner_type), "SCHUR_JACOBI")
    for key, value in tolerances.items():
        setattr(so, key, value)
    so.num_threads = threads
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    start = time.perf_counter()
    summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary
    wall = time.perf_counter() - start
    return dict(initial_cost=summary.initial_cost, final_cost=summary.final_cost,
                iterations=summary.num_successful_steps + summary.num_unsuccessful_steps,
                time=wall, threads=summary.num_threads_used, solver=str(summary.linear_solver_type_used).split(".")[-1])


def run_recon(problem, device: str, threads: int, tolerances: dict = TOLERANCES, **extra) -> dict:
    options = BAOptions(device=device, num_threads=threads, **tolerances, **extra)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    _, summary = solve(problem, options)
    wall = time.perf_counter() - start
    out = dict(initial_cost=summary.initial_cost, final_cost=summary.final_cost, iterations=summary.num_iterations,
               time=wall, time_per_iteration=summary.time_per_iteration, solver=summary.linear_solver,
               threads=summary.num_threads,
               termination=summary.message, pcg_iterations=sum(summary.pcg_iterations))
    if device == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["bandwidth_fraction"] = achieved_bandwidth(problem, summary) / copy_bandwidth()
    return out


def cost_ok(recon: dict, ceres: dict) -> bool:
    """The issue's cost target: recon's final cost at most Ceres' x (1 + 1e-4)."""
    return recon["final_cost"] <= ceres["final_cost"] * (1 + 1e-4)


def fastest(runs: dict, repeat: int) -> dict:
    """{name: the result of ``runs[name]()`` with the smallest wall time over ``repeat`` calls}.

    The solvers take turns (in alternating order) rather than each running ``repeat`` times in a
    row, so a burst of load from other processes falls on both of them.
    """
    results = {name: [] for name in runs}
    names = list(runs)
    for i in range(max(repeat, 1)):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(runs[name]())
    return {name: min(found, key=lambda result: result["time"]) for name, found in results.items()}


def copy_bandwidth() -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    src = torch.empty(2**27, dtype=torch.float64, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 8 * 10 / (time.perf_counter() - start)


def achieved_bandwidth(problem, summary) -> float:
    """Estimated bytes/s of the solve: a traffic model counting the per-observation Jacobians
    (M x 2 x (6 + Ke + 3) float64) written once per linearization and read twice per
    normal-equation build and twice per Schur-complement product (each CG iteration, or the
    dense assembly). A lower bound: gathers, scatters and point blocks are not counted."""
    m = problem.num_observations
    ke = int((~problem.camera_constant).any(0).sum())
    jac_bytes = m * 2 * (6 + ke + 3) * 8
    products = sum(max(n, 1) for n in summary.pcg_iterations)
    total = jac_bytes * (3 * summary.num_successful_steps + 2 * products)
    return total / max(sum(summary.iteration_times), 1e-9)


def _scale_child(preset: str, device: str, threads: int, tolerances: dict, queue) -> None:
    problem, _ = synthetic_preset(preset)
    queue.put(run_recon(problem, device, threads, tolerances, loss="huber", loss_scale=2.0)
              | dict(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_scale_cpu(preset: str, threads: int, tolerances: dict) -> dict:
    """One preset on the CPU in a fresh process so its peak RSS is the solve's own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scale_child, args=(preset, "cpu", threads, tolerances, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--threads", type=int, default=2, help="threads for both torch and Ceres")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each solver per BAL problem (same start); the fastest of each is reported")
    parser.add_argument("--bal", default=",".join(BAL_FILES), help="comma-separated BAL files under shared/data/bal ('' = none)")
    parser.add_argument("--scale", default="0.1M,1.3M,5M", help="comma-separated synthetic presets ('' = none)")
    parser.add_argument("--ceres-scale", action="store_true", help="also run Ceres on the synthetic presets")
    parser.add_argument("--ceres-scale-solver", default="SPARSE_SCHUR", choices=["SPARSE_SCHUR", "ITERATIVE_SCHUR"],
                        help="Ceres' linear solver on the synthetic presets")
    parser.add_argument("--scale-iterations", type=int, default=50,
                        help="iteration cap for the synthetic presets (function tolerance 1e-6 there, both solvers)")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [d for d in args.devices.split(",") if d]
    report = dict(threads=args.threads, repeat=args.repeat, torch=torch.__version__, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), bal=[], scale=[],
                  cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)

    for name in [n for n in args.bal.split(",") if n]:
        problem = read_bal(SHARED / "data" / "bal" / name)
        for device in devices:
            best = fastest(dict(ceres=lambda: run_ceres(problem, args.threads, "SPARSE_SCHUR"),
                                recon=lambda: run_recon(problem, device, args.threads)), args.repeat)
            ceres, recon = best["ceres"], best["recon"]
            row = dict(problem=name, device=device, observations=problem.num_observations, recon=recon, ceres=ceres,
                       time_ratio=recon["time"] / ceres["time"],
                       cost_ok=cost_ok(recon, ceres))
            report["bal"].append(row)
            if not args.json:
                print(f"{name:32s} {device:4s} obs {problem.num_observations:7d} | initial {recon['initial_cost']:.6e} "
                      f"(ceres {ceres['initial_cost']:.6e}) | final recon {recon['final_cost']:.6e} ceres "
                      f"{ceres['final_cost']:.6e} ok={row['cost_ok']} | iters {recon['iterations']:3d}/{ceres['iterations']:3d} "
                      f"| time recon {recon['time']:.3f}s ({recon['solver']}, {recon['threads']} thr) ceres {ceres['time']:.3f}s "
                      f"({ceres['solver']}, {ceres['threads']} thr) | ratio {row['time_ratio']:.2f}", flush=True)

    scale_tol = dict(TOLERANCES, function_tolerance=1e-6, max_num_iterations=args.scale_iterations)
    for preset in [p for p in args.scale.split(",") if p]:
        problem, _ = synthetic_preset(preset)
        ceres = (run_ceres(problem, args.threads, args.ceres_scale_solver, "huber", 2.0, scale_tol)
                 if args.ceres_scale else None)
        for device in devices:
            recon = (run_scale_cpu(preset, args.threads, scale_tol) if device == "cpu"
                     else run_recon(problem, device, args.threads, scale_tol, loss="huber", loss_scale=2.0))
            row = dict(preset=preset, device=device, observations=problem.num_observations, cameras=problem.num_images,
                       points=problem.num_points, recon=recon, ceres=ceres,
                       speedup_vs_ceres_cpu=ceres["time"] / recon["time"] if ceres else None,
                       cost_ok=cost_ok(recon, ceres) if ceres else None)
            report["scale"].append(row)
            if not args.json:
                mem = recon.get("peak_memory_mb", recon.get("peak_rss_mb"))
                line = (f"synthetic {preset:5s} {device:4s} obs {problem.num_observations:8d} cams {problem.num_images:5d} | "
                        f"cost {recon['initial_cost']:.6e} -> {recon['final_cost']:.6e} | {recon['iterations']} iters "
                        f"({recon['solver']}, {recon['pcg_iterations']} CG) | {recon['time_per_iteration']:.3f} s/iter, "
                        f"{recon['time']:.2f} s total | peak mem {mem:.0f} MiB")
                if "bandwidth_fraction" in recon:
                    line += f" | bandwidth {100 * recon['bandwidth_fraction']:.1f}% of copy"
                if ceres:
                    line += (f" | ceres {ceres['final_cost']:.6e} ok={row['cost_ok']} in {ceres['time']:.2f} s "
                             f"({ceres['iterations']} iters, {ceres['solver']}) speed-up {row['speedup_vs_ceres_cpu']:.1f}x")
                print(line, flush=True)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
