"""Builds the assets guardforge ships (tiny-shapes, the embedded text guard's weights); run from a checkout.

It may import guardforge; guardforge never imports it, and the wheel leaves it out (pyproject.toml).
"""
