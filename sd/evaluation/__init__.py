"""Measuring generated images: the Frechet distance between feature statistics (FID's formula) in
frechet.py, FID's Inception-v3 in inception.py; CLIP score and `python -m sd.evaluate` are issue 19's rest.
May import sd.models and sd.checkpoints; never sampling or training (the commands drive the models)."""
from .frechet import StatsError, frechet_distance, load_stats, save_stats, statistics
from .inception import FIDInception, InceptionError, load_inception

__all__ = ["statistics", "frechet_distance", "save_stats", "load_stats", "StatsError", "load_inception", "FIDInception",
           "InceptionError"]
