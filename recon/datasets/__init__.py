"""Dataset code: the synthetic scene renderer (and, later, loaders for benchmark layouts).

Data itself lives in the top-level ``datasets/`` folder, which is not an importable package.
"""
