"""Reading images and the hloc file formats (features.h5, matches.h5, pairs files)."""
