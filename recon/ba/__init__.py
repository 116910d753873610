"""recon's bundle-adjustment engine: Levenberg-Marquardt with a Schur complement, on CPU or CUDA.

Entry points:

* :func:`adjust` - adjust a ``pycolmap.Reconstruction`` in place, like ``pycolmap.bundle_adjustment``::

      from recon.ba import adjust, BAOptions
      summary = adjust(rec, BAOptions(loss="cauchy", loss_scale=1.0, refine_principal_point=False,
                                      constant_image_ids=(1,), max_num_iterations=50))
      print(summary.brief_report())

* :func:`solve` - the same solver on a tensor :class:`Problem` (e.g. from :func:`read_bal`).
"""
from __future__ import annotations

from .bal import read_bal, synthetic_bal, synthetic_preset, write_bal
from .cameras import MODELS, get_model, project
from .problem import Problem, from_reconstruction, to_reconstruction, write_to_reconstruction
from .solver import BAOptions, Summary, solve

__all__ = ["adjust", "solve", "BAOptions", "Summary", "Problem", "from_reconstruction", "to_reconstruction",
           "write_to_reconstruction", "read_bal", "write_bal", "synthetic_bal", "synthetic_preset", "MODELS",
           "get_model", "project"]


def adjust(reconstruction, options: BAOptions | None = None, image_ids=None) -> Summary:
    """Bundle-adjust ``reconstruction`` (a ``pycolmap.Reconstruction``) in place.

    All registered images (or ``image_ids``) and the 3D points they observe are adjusted; which
    parameters move is set by ``options`` (``refine_focal_length``, ``refine_principal_point``,
    ``refine_extra_params``, ``refine_poses``, ``refine_points``, ``constant_image_ids``,
    ``constant_camera_ids``, ``constant_point3D_ids``, ``gauge``), and how by the solver options
    (``loss``, ``loss_scale``, ``max_num_iterations``, tolerances, ``linear_solver``, ``device``).
    The model is written back (poses through their frames, pycolmap 4.2) only when the solve did
    not fail; the returned :class:`Summary` says what happened.
    """
    options = options or BAOptions()
    problem = from_reconstruction(
        reconstruction, refine_focal_length=options.refine_focal_length,
        refine_principal_point=options.refine_principal_point, refine_extra_params=options.refine_extra_params,
        refine_poses=options.refine_poses, refine_points=options.refine_points,
        constant_image_ids=options.constant_image_ids, constant_camera_ids=options.constant_camera_ids,
        constant_point3D_ids=options.constant_point3D_ids, image_ids=image_ids, gauge=options.gauge)
    result, summary = solve(problem, options)
    if summary.termination != "FAILURE":
        write_to_reconstruction(result, reconstruction)
    return summary
