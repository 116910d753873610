"""Evaluation of a COLMAP model against ground truth (``recon evaluate MODEL --gt GT``).

:func:`evaluate` returns a JSON-ready dict; :func:`format_table` prints it; :func:`write_json`
stores it atomically. Definitions of every measure: :mod:`recon.evaluate.metrics` (pairwise pose
errors, AUC, RRA/RTA, mAA) and :mod:`recon.evaluate.report` (registration, centre and focal error).
"""
from .geometry import Sim3, direction_angle_deg, relative_poses, rotation_angle_deg, umeyama
from ..io.jsonfile import write_json
from .metrics import PairErrors, accuracy, mean_average_accuracy, pair_errors, pose_auc
from .report import evaluate, format_table, load_model

__all__ = [
    "PairErrors",
    "Sim3",
    "accuracy",
    "direction_angle_deg",
    "evaluate",
    "format_table",
    "load_model",
    "mean_average_accuracy",
    "pair_errors",
    "pose_auc",
    "relative_poses",
    "rotation_angle_deg",
    "umeyama",
    "write_json",
]
