"""Calibration and validation data: readers are plain iterables of feeds (dict[str, np.ndarray])."""

from calibration.readers import from_npz, from_texts, sample_by_length, synthetic, synthetic_text

__all__ = ["from_npz", "from_texts", "sample_by_length", "synthetic", "synthetic_text"]
