"""guardforge: a local image-generation studio with a content-safety guard built in."""

__version__ = "0.1.0"
