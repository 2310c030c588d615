"""east: Extreme Adaptive Sparse Training, reproducible."""

__version__ = "0.1.0"
