"""Drop-in replacements for hloc's pipeline modules, with hloc's signatures and files.

An hloc script switches to recon by changing its imports::

    from recon.hloc import extract_features, localize_sfm, match_features, pairs_from_exhaustive, reconstruction

Confs are hloc's dicts (``extract_features.confs["sift"]``, ``match_features.confs["NN-ratio"]``,
...); model names are mapped onto recon's registry. Outputs are hloc's files, readable by hloc.
"""
from . import extract_features, localize_sfm, match_features, pairs_from_exhaustive, reconstruction  # noqa: F401
