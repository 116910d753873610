"""Focal-length and metric-scale priors: :mod:`.focal` (EXIF > depth source > default),
:mod:`.depth` (the DepthSource interface and its implementations), :mod:`.scale` (metric scale
of a model from depth priors)."""
