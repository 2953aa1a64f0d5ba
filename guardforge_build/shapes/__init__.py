"""Trains tiny-shapes, the embedded default model, stage by stage, and exports it into the package."""
