"""``recon`` command line: reconstruct, pairs, match, evaluate, localize, evaluate-localization, demo, render.

Every command prints one clear line and exits non-zero on bad input (missing folder, no images,
unknown config key); nothing half-written is left behind (see ``recon.pipeline``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from matchers.base import ConfigError
from matchers.weights import WeightsNotFoundError

from .heap import reuse_freed_memory
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
    parser = argparse.ArgumentParser(prog="recon", description="From a folder of photos to a COLMAP model, in hloc's file formats.")
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

    localize = commands.add_parser("localize", help="localize query images against a model "
                                   "(OUTPUT/results.txt in hloc's format, OUTPUT/localization.json)")
    localize.add_argument("model", type=Path, help="COLMAP model, or a recon output folder (sparse/0, features.h5)")
    localize.add_argument("queries", type=Path,
                          help="folder of query images, or an hloc query list ('name [MODEL W H PARAMS...]' per line)")
    localize.add_argument("output", type=Path, help="output folder (created; reruns resume)")
    localize.add_argument("--query-images", type=Path, help="folder the list's names are relative to "
                          "(default: the list's folder)")
    localize.add_argument("--map-features", type=Path, help="features.h5 the model was built from "
                          "(default: the one in the model's recon output folder)")
    add_config_arguments(localize)

    evaluate_loc = commands.add_parser("evaluate-localization", help="score localization results against ground truth")
    evaluate_loc.add_argument("results", type=Path, help="results file (name qw qx qy qz tx ty tz per line)")
    evaluate_loc.add_argument("--gt", type=Path, required=True, help="ground truth (any layout `recon evaluate` reads)")
    evaluate_loc.add_argument("--gt-image-root", metavar="DIR", help="transforms.json only: names relative to this folder")
    evaluate_loc.add_argument("--queries", type=Path, help="the queries (localization.json or a query list), so "
                              "failures count (default: localization.json next to RESULTS, else the results' names)")
    evaluate_loc.add_argument("--threshold", dest="thresholds", action="append", metavar="POSITION,DEGREES",
                              help="recall threshold, repeatable (default 0.25,2 0.5,5 5,10)")
    evaluate_loc.add_argument("--relative", action="store_true",
                              help="non-metric ground truth: positions as fractions of the scene extent "
                                   "(diagonal of the GT camera centres' bounding box)")
    evaluate_loc.add_argument("--align", type=Path, metavar="MAP_MODEL",
                              help="the map's model when it is not in the GT frame: Sim3 of its cameras onto the GT")
    evaluate_loc.add_argument("--json", type=Path, help="also write the full result as JSON here")

    demo = commands.add_parser("demo", help="reconstruct the bundled sample scene and evaluate it")
    demo.add_argument("output", type=Path, nargs="?", default=Path("outputs/demo"))
    add_config_arguments(demo)

    render = commands.add_parser("render", add_help=False, help="render a synthetic scene with exact ground truth "
                                 "(recon render --help for its options)")
    render.add_argument("arguments", nargs=argparse.REMAINDER)  # dispatched before parsing, see main()
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in DELEGATED:  # commands with their own parser, options and --help
        module, function = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module, __package__), function)(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[recon] %(message)s")  # libraries: warnings only
    logging.getLogger("recon").setLevel(logging.INFO)
    import pycolmap  # after argument parsing: --help stays instant

    pycolmap.logging.minloglevel = 0 if getattr(args, "verbose", False) else 2
    try:
        with reuse_freed_memory():
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
    from .graph import reads_features

    pipeline = _pipeline(args)
    pipeline.find_images()
    if reads_features(pipeline.config["pairs"], len(pipeline.infos)):
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


def cmd_localize(args: argparse.Namespace) -> int:
    from .localize import localize, read_queries

    queries, image_dir = read_queries(args.queries, args.query_images)
    results = localize(args.model, queries, image_dir, args.output, _config(args), map_features=args.map_features)
    localized = [r for r in results.values() if r.success]
    print(f"localized {len(localized)}/{len(results)} queries -> {args.output / 'results.txt'}")
    for result in results.values():
        if not result.success:
            print(f"  failed {result.name}: {result.reason} ({result.message})")
    return 0


def cmd_evaluate_localization(args: argparse.Namespace) -> int:
    import json

    from .datasets.ground_truth import load_ground_truth
    from .evaluate.report import load_model
    from .io.jsonfile import write_json
    from .localize import DEFAULT_THRESHOLDS, evaluate_localization, format_localization_table, parse_query_list

    if not args.results.is_file():
        raise FileNotFoundError(f"results file {args.results} does not exist")
    queries_file = args.queries or (args.results.parent / "localization.json")
    queries = None
    if queries_file.is_file():
        queries = (list(json.loads(queries_file.read_text())["queries"]) if queries_file.suffix == ".json"
                   else [q.name for q in parse_query_list(queries_file)])
    elif args.queries is not None:
        raise FileNotFoundError(f"queries {args.queries} do not exist")
    thresholds = [parse_threshold(text) for text in args.thresholds] if args.thresholds else DEFAULT_THRESHOLDS
    result = evaluate_localization(args.results, load_ground_truth(args.gt, image_root=args.gt_image_root),
                                   queries, thresholds, relative=args.relative,
                                   align_to=load_model(args.align) if args.align else None)
    print(format_localization_table(result))
    if queries is None:
        print("(no query list: only the queries in the results were scored, failures are not counted)")
    if args.json:
        write_json(args.json, result)
    return 0


def parse_threshold(text: str) -> tuple[float, float]:
    try:
        position, degrees = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--threshold expects POSITION,DEGREES (e.g. 0.25,2), got '{text}'") from None
    return position, degrees


def cmd_demo(args: argparse.Namespace) -> int:
    from .datasets.sample import sample_paths
    from .pipeline import reconstruct

    images, gt = sample_paths()
    model, report = reconstruct(images, args.output, _config(args))
    print(summary_line(report, args.output))
    print(evaluate_and_format(args.output / "sparse" / "0", gt, args.output / "evaluation.json"))
    return 0


def summary_line(report: dict, output: Path) -> str:
    error = report["mean_reprojection_error"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings"].items() if v >= 0.05)
    scale = report.get("metric_scale") or {}
    metric = (f", metric scale {scale['scale']:.4g} m/unit (spread {100 * scale['spread']:.1f}%)"
              if "scale" in scale else "")
    return (f"registered {report['num_registered']}/{report['num_images']} images, {report['num_points']} points, "
            f"track length {report['mean_track_length']:.2f}, reprojection error "
            f"{'n/a' if error is None else f'{error:.3f}px'}{metric} -> {output}\n  time: {stages}")


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


# Commands whose module has its own argument parser: (module, function taking argv).
DELEGATED = {"evaluate": (".evaluate.cli", "main"), "render": (".datasets.render", "main")}
COMMANDS = {"reconstruct": cmd_reconstruct, "pairs": cmd_pairs, "match": cmd_match,
            "localize": cmd_localize, "evaluate-localization": cmd_evaluate_localization,
            "demo": cmd_demo}

if __name__ == "__main__":
    sys.exit(main())
