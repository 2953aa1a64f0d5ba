"""Models: the registry of what is on disk, loading (diffusers folders, single files), and the cache."""
