"""UniMatch V2 semi-supervised semantic segmentation."""

__version__ = "0.1.0"
