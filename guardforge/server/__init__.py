"""The HTTP server: a FastAPI app built from a Studio, with A1111, native and moderation routes and the UI."""
