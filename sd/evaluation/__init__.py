"""Measuring generated images: the Frechet distance between feature statistics (FID's formula) in
frechet.py, FID's Inception-v3 in inception.py, CLIP score (with sd.models.clip's CLIPModel) in clip_score.py.
May import sd.models and sd.checkpoints; never sampling or training (`python -m sd.evaluate` drives them)."""
from .clip_score import clip_score, load_clip
from .frechet import StatsError, frechet_distance, load_stats, save_stats, statistics
from .inception import FIDInception, InceptionError, load_inception

__all__ = ["statistics", "frechet_distance", "save_stats", "load_stats", "StatsError", "load_inception", "FIDInception",
           "InceptionError", "load_clip", "clip_score"]
