"""``recon`` command line: reconstruct, pairs, match, evaluate, demo, render.

Every command prints one clear line and exits non-zero on bad input (missing folder, no images,
unknown config key); nothing half-written is left behind (see ``recon.pipeline``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from matchers.base import ConfigError
from matchers.weights import WeightsNotFoundError

from .io.images import ImageError

logger = logging.getLogger("recon")
EXPECTED_ERRORS = (ConfigError, ImageError, WeightsNotFoundError, FileNotFoundError, ValueError, KeyError, RuntimeError)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="preset name in configs/ (default, aliked_lightglue, ...) or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override one option, e.g. --set matcher.ratio_threshold=0.9 (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where networks and solvers run (default: the config's, 'auto')")
    parser.add_argument("-v", "--verbose", action="store_true", help="show COLMAP's own log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("reconstruct", help="photos -> COLMAP model (every stage)")
    run.add_argument("images", type=Path, help="folder of images (searched recursively)")
    run.add_argument("output", type=Path, help="output folder (created; reruns resume)")
    run.add_argument("--text", action="store_true", help="also write the model as COLMAP text files")
    run.add_argument("--gt", type=Path, help="ground truth to evaluate against when done")
    add_config_arguments(run)

    pairs = commands.add_parser("pairs", help="select image pairs (writes OUTPUT/pairs.txt)")
    pairs.add_argument("images", type=Path)
    pairs.add_argument("output", type=Path)
    add_config_arguments(pairs)

    match = commands.add_parser("match", help="features, pairs and matches (features.h5, matches.h5)")
    match.add_argument("images", type=Path)
    match.add_argument("output", type=Path)
    add_config_arguments(match)

    evaluate = commands.add_parser("evaluate", add_help=False, help="compare a model with ground truth "
                                   "(recon evaluate --help for its options)")
    evaluate.add_argument("arguments", nargs=argparse.REMAINDER)  # dispatched before parsing, see main()

    demo = commands.add_parser("demo", help="reconstruct the bundled sample scene and evaluate it")
    demo.add_argument("output", type=Path, nargs="?", default=Path("outputs/demo"))
    add_config_arguments(demo)

    render = commands.add_parser("render", help="render a synthetic scene with exact ground truth")
    render.add_argument("output", type=Path)
    render.add_argument("--views", type=int, default=24)
    render.add_argument("--width", type=int, default=512)
    render.add_argument("--height", type=int, default=384)
    render.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:  # its own parser (recon.evaluate.cli), options and --help included
        from .evaluate.cli import main as evaluate_main

        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[recon] %(message)s")
    import pycolmap  # after argument parsing: --help stays instant

    pycolmap.logging.minloglevel = 0 if getattr(args, "verbose", False) else 2
    try:
        return COMMANDS[args.command](args)
    except EXPECTED_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"recon {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recon {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _config(args: argparse.Namespace) -> dict:
    from .config import load_config

    return load_config(args.config, args.overrides, device=args.device)


def _pipeline(args: argparse.Namespace, text: bool = False):
    from .pipeline import Pipeline

    return Pipeline(args.images, args.output, _config(args), text=text)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .pipeline import reconstruct

    if args.gt is not None and not args.gt.exists():
        raise FileNotFoundError(f"ground truth {args.gt} does not exist")
    model, report = reconstruct(args.images, args.output, _config(args), text=args.text)
    print(summary_line(report, args.output))
    if args.gt is not None:
        names = list(report["focal_priors"])  # every image of this run
        print(evaluate_and_format(args.output / "sparse" / "0", args.gt, args.output / "evaluation.json", names))
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    pipeline.find_images()
    needs_features = pipeline.config["pairs"]["name"] not in ("exhaustive", "sequential", "from_file")
    if needs_features:
        pipeline.extract()
    pairs = pipeline.select_pairs()
    print(f"{len(pairs)} pairs -> {pipeline.pairs_path}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    pipeline.find_images()
    pipeline.extract()
    pipeline.select_pairs()
    pipeline.match()
    print(f"{len(pipeline.pairs)} pairs matched -> {pipeline.matches_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .datasets.sample import sample_paths
    from .pipeline import reconstruct

    images, gt = sample_paths()
    model, report = reconstruct(images, args.output, _config(args))
    print(summary_line(report, args.output))
    print(evaluate_and_format(args.output / "sparse" / "0", gt, args.output / "evaluation.json"))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .datasets.render import main as render_main

    return render_main([str(args.output), "--views", str(args.views), "--width", str(args.width),
                        "--height", str(args.height), "--seed", str(args.seed)])


def summary_line(report: dict, output: Path) -> str:
    error = report["mean_reprojection_error"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings"].items() if v >= 0.05)
    return (f"registered {report['num_registered']}/{report['num_images']} images, {report['num_points']} points, "
            f"track length {report['mean_track_length']:.2f}, reprojection error "
            f"{'n/a' if error is None else f'{error:.3f}px'} -> {output}\n  time: {stages}")


def evaluate_and_format(model: Path, gt: Path, json_path: Path | None, names: list[str] | None = None) -> str:
    """Score ``model`` against ``gt`` (restricted to ``names``, the images of the run, if given)."""
    from .datasets.ground_truth import load_ground_truth
    from .evaluate import evaluate, format_table
    from .io.jsonfile import write_json

    truth = load_ground_truth(gt)
    result = evaluate(model, truth.subset(names) if names is not None else truth)
    if json_path is not None:
        write_json(json_path, result)
    return format_table(result)


COMMANDS = {"reconstruct": cmd_reconstruct, "pairs": cmd_pairs, "match": cmd_match,
            "demo": cmd_demo, "render": cmd_render}

if __name__ == "__main__":
    sys.exit(main())
