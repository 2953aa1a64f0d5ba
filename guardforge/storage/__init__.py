"""Storage: generated images on disk, in A1111's folder layout, with their infotext and guard verdict."""
