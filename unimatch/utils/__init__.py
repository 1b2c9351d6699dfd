"""Utilities with no knowledge of segmentation: atomic file writes, progress bars, the name -> entry registry."""
