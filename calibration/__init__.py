"""Calibration and validation data: readers are plain iterables of feeds (dict[str, np.ndarray])."""

from calibration.readers import synthetic_text

__all__ = ["synthetic_text"]
