"""ShieldGemma 2 (4B) for generated images: P(Yes) per policy -> S12 sexual, S9 dangerous, S1 violence."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from guardforge.errors import GuardforgeError
from guardforge.guard.backends.base import Scores

# ShieldGemma 2's three built-in policies and the hazard each is closest to. "dangerous" is about building
# weapons and explosives (its definition), hence S9; "violence" is gore and cruelty, hence S1.
POLICY_CODES: dict[str, str] = {"sexual": "S12", "dangerous": "S9", "violence": "S1"}


class ShieldGemma2Backend:
    """Asks the model once per (image, policy) and reads P(Yes), the probability the image violates it."""

    name = "shieldgemma2"
    categories = frozenset(POLICY_CODES.values())

    def __init__(self, model, processor, batch_size: int = 4) -> None:
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size  # images per forward pass (each is 3 rows: one per policy)

    @classmethod
    def from_settings(cls, settings) -> ShieldGemma2Backend:
        path = settings.guard.shieldgemma_path
        if path is None:
            raise GuardforgeError("guard.shieldgemma_path is not set (GUARDFORGE_GUARD__SHIELDGEMMA_PATH)")
        device = settings.device if settings.device != "auto" else None
        return cls.from_pretrained(Path(path), device=device)

    @classmethod
    def from_pretrained(cls, folder: Path, device: str | None = None, dtype=None) -> ShieldGemma2Backend:
        from transformers import AutoProcessor, ShieldGemma2ForImageClassification

        from guardforge.models.devices import large_model_placement

        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise GuardforgeError(f"{folder} has no config.json: point guard.shieldgemma_path at the model folder")
        device, dtype = large_model_placement(device, dtype)
        model = ShieldGemma2ForImageClassification.from_pretrained(folder, dtype=dtype, local_files_only=True)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        return cls(model.to(device), processor)

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        import torch

        policies = list(POLICY_CODES)
        results: list[Scores] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [image.convert("RGB") for image in images[start:start + self.batch_size]]
            inputs = self.processor(images=chunk, policies=policies, return_tensors="pt")
            device = next(self.model.parameters()).device
            inputs = {key: value.to(device) for key, value in inputs.items()}
            with torch.inference_mode():
                probabilities = self.model(**inputs).probabilities.float()
            # Rows come image by image, policy by policy; column 0 is P(Yes) = violates.
            p_yes = probabilities[:, 0].reshape(len(chunk), len(policies))
            for row in p_yes:
                scores = {POLICY_CODES[policy]: float(row[i]) for i, policy in enumerate(policies)}
                results.append(Scores(scores=scores, unsafe=None, extra={"policies": policies}))
        return results
