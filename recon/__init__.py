"""recon: from a folder of photos to a COLMAP model, in hloc's formats, on PyTorch."""
import os

# OpenMP threads that sleep at barriers instead of spinning, unless the user chose otherwise. It
# must be set before torch is first imported (libgomp reads it once). On a CPU shared with other
# work, spinning threads wait for time slices at every parallel operation: one LM iteration of a
# 3,000-image bundle adjustment took 25 s instead of 6 s at load 4 (ad hoc), and
# benchmarks/ba_bal.py measured ~10x on the BAL problems. Idle, the two were even.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
