"""The generation engine: diffusers pipelines driven by A1111-style requests."""
