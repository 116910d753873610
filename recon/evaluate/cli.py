"""``recon evaluate MODEL --gt GT [--json FILE]``: print the evaluation table, optionally save JSON."""
from __future__ import annotations

import argparse
import sys

from ..datasets.ground_truth import load_ground_truth
from ..io.jsonfile import write_json
from .report import evaluate, format_table, load_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon evaluate",
        description="Compare a COLMAP model with ground truth: relative pose AUC@1/5/10/20, RRA@15, "
                    "RTA@15, mAA(30), registration, camera-centre error after Sim(3) alignment, "
                    "focal error.")
    parser.add_argument("model", help="COLMAP model folder (text or binary), or an output folder with sparse/0")
    parser.add_argument("--gt", required=True,
                        help="ground truth: COLMAP model folder, folder of Strecha *.camera files, "
                             "Middlebury *_par.txt, or instant-ngp/NeRF transforms.json")
    parser.add_argument("--gt-image-root", metavar="DIR",
                        help="transforms.json only: image names are relative to this folder "
                             "(default: the deepest folder common to all frames)")
    parser.add_argument("--json", metavar="FILE", help="also write the full result as JSON here")
    parser.add_argument("--translation-sign-ambiguous", action="store_true",
                        help="fold translation-direction errors to min(a, 180 - a) as the CO3D "
                             "evaluations do (default: full angle in [0, 180])")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_model(args.model)
        gt = load_ground_truth(args.gt, image_root=args.gt_image_root)
        result = evaluate(model, gt, sign_ambiguous=args.translation_sign_ambiguous)
    except (FileNotFoundError, ValueError) as error:
        print(f"recon evaluate: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
