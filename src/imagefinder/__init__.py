"""ImageFinder: self-hosted reverse image search."""

__version__ = "0.1.0"
