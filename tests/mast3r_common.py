"""Shared by the MASt3R tests: run torch single-threaded while they execute.

On a loaded CI machine, OpenMP worker threads spinning against other processes made the tiny
model's forward pass ~10x slower with 2 threads than with 1. The fixture README shows results are
thread-count independent within the tested tolerances (only DPT convolution sums reorder).
"""
from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
