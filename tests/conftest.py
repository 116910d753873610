"""Shared test fixtures.

Real data, fixtures and weights live in ``../shared`` next to the repository checkout (CI has it;
a plain clone may not). Tests that need it take the ``shared`` fixture and are skipped with a
reason naming the missing path when it is absent, never silently passed. ``RECON_SHARED``
overrides the location.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """Path inside ../shared; skips the calling test when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder; set RECON_SHARED to point at it)")
    return path


@pytest.fixture
def shared() -> Path:
    return shared_path()


@pytest.fixture
def one_torch_thread():
    """Run torch single-threaded for the test: on a loaded 2-core machine OpenMP workers spinning
    against other processes made small problems ~10x slower with 2 threads than with 1; results
    do not depend on the thread count within the tests' tolerances."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
