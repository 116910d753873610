"""Pictures of results: match plots and camera / point-cloud renders (PIL only, no display)."""
from .matches import plot_matches  # noqa: F401
from .model import render_model  # noqa: F401
