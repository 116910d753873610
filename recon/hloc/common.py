"""Small helpers shared by the hloc drop-in modules."""
from __future__ import annotations

from pathlib import Path


def image_names_from(image_list: Path | str | list[str]) -> list[str]:
    """hloc's ``parse_image_lists``: a list of names, or a text file with one name (first token) per line."""
    if isinstance(image_list, (str, Path)):
        lines = Path(image_list).read_text().splitlines()
        return [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    return list(image_list)
