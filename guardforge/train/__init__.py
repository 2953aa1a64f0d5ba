"""Training: DreamBooth (full or LoRA) on PyTorch Lightning, and the tiny-shapes world its study runs in."""
