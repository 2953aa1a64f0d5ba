"""DreamBooth data: instance and class images, and batches that mix them in a fixed ratio.

Every batch is a pure function of (seed, micro_step, the rank's slice of the global batch): which images,
which crop, which flip. The data loader holds no state worth saving, so a resumed run sees exactly the
batches an uninterrupted one would, whatever the loader or its workers did before the interruption. Rank r
of W takes rows r*B..(r+1)*B-1 of the global batch that one process with batch W*B would draw, so a run on
any number of processes or nodes trains on the same examples per step as one process with the same global
batch (and a checkpoint resumes on another count).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from guardforge.errors import InvalidRequest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts, stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_for(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))


def list_images(folder: Path) -> list[Path]:
    """Image files in a folder, sorted by name so that indices mean the same thing on every machine."""
    if not folder.is_dir():
        raise InvalidRequest(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to `resolution`, crop a square (centre or random), maybe flip, scale to [-1, 1]."""

    resolution: int
    center_crop: bool = False
    random_flip: bool = False

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        size = self.resolution
        scale = size / min(image.width, image.height)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        # Draw every random number even when unused, so that options do not shift later draws.
        draws = torch.rand(3, generator=generator).tolist()
        if self.center_crop:
            left, top = (width - size) // 2, (height - size) // 2
        else:
            left, top = int(draws[0] * (width - size + 1)), int(draws[1] * (height - size + 1))
        image = image.crop((left, top, left + size, top + size))
        if self.random_flip and draws[2] < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# Draws were once keyed by rank; one-process runs keep rank 0's key, so they draw exactly as they always did.
STREAM = 0


def global_slot(rank: int, per_batch: int, slot: int) -> int:
    """Where a rank's slot sits in the global batch: rank r holds slots r*per_batch .. (r+1)*per_batch-1."""
    return rank * per_batch + slot


def global_rows(rank: int, world_size: int, num_instance: int, num_class: int, device=None) -> torch.Tensor:
    """The global-batch rows of a rank's batch (instance rows first, then class rows, in both)."""
    instance = torch.arange(num_instance, device=device) + rank * num_instance
    class_rows = torch.arange(num_class, device=device) + world_size * num_instance + rank * num_class
    return torch.cat([instance, class_rows])


class DreamBoothBatches(IterableDataset):
    """An endless stream of ready batches, micro-step `start_step` onwards.

    Batch layout (one forward pass): the first `instance_batch_size` rows are instance examples with the
    instance prompt, the next `class_batch_size` rows class examples with the class prompt.
    Images are visited in a fresh permutation per pass over each folder, like a shuffled epoch. The batch is
    rank `rank`'s slice of a global batch `world_size` times as large (see the module docstring).
    """

    def __init__(self, instance_paths: list[Path], class_paths: list[Path], *, instance_batch_size: int,
                 class_batch_size: int, transform: ImageTransform, instance_input_ids: torch.Tensor,
                 class_input_ids: torch.Tensor | None, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0):
        if not instance_paths:
            raise InvalidRequest("the instance folder holds no images (.png, .jpg, .jpeg, .webp, .bmp)")
        if class_batch_size and not class_paths:
            raise InvalidRequest("prior preservation is on but there are no class images")
        self.instance_paths = instance_paths
        self.class_paths = class_paths
        self.instance_batch_size = instance_batch_size
        self.class_batch_size = class_batch_size
        self.transform = transform
        self.instance_input_ids = instance_input_ids
        self.class_input_ids = class_input_ids
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def _pick(self, kind: str, paths: list[Path], per_batch: int, micro_step: int) -> list[Path]:
        picked = []
        for slot in range(per_batch):
            k = micro_step * per_batch * self.world_size + global_slot(self.rank, per_batch, slot)
            epoch, position = divmod(k, len(paths))
            order = torch.randperm(len(paths), generator=generator_for(self.seed, STREAM, kind, epoch))
            picked.append(paths[int(order[position])])
        return picked

    def batch(self, micro_step: int) -> dict:
        """The batch for one micro-step: a pure function of (seed, micro_step, rank, world_size)."""
        pixels, input_ids = [], []
        for kind, paths, per_batch, ids in (
            ("instance", self.instance_paths, self.instance_batch_size, self.instance_input_ids),
            ("class", self.class_paths, self.class_batch_size, self.class_input_ids),
        ):
            for slot, path in enumerate(self._pick(kind, paths, per_batch, micro_step)):
                generator = generator_for(self.seed, STREAM, kind, "augment", micro_step,
                                          global_slot(self.rank, per_batch, slot))
                pixels.append(self.transform(load_rgb(path), generator))
                input_ids.append(ids)
        return {
            "pixel_values": torch.stack(pixels),
            "input_ids": torch.stack(input_ids),
            "num_instance": self.instance_batch_size,
            "micro_step": micro_step,
        }

    def __iter__(self):
        # With N workers, worker w makes steps start+w, start+w+N, ...; the loader interleaves them in order.
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for micro_step in itertools.count(self.start_step + worker, workers):
            yield self.batch(micro_step)


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    """Token ids padded to the tokenizer's maximum length, as the SD text encoder was trained."""
    return tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids[0]


def make_dataloader(dataset: DreamBoothBatches, workers: int = 0) -> DataLoader:
    # batch_size=None: the dataset already yields whole batches.
    return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())



class DreamBoothDataModule(L.LightningDataModule):
    """Builds the loader when Lightning asks, starting at the micro-step the (possibly resumed) run is at.

    Lightning restores global_step before it asks for the train loader, so the start is known here.
    """

    def __init__(self, dataset_kwargs: dict, workers: int = 0):
        super().__init__()
        self.dataset_kwargs = dataset_kwargs
        self.workers = workers

    def use_paths(self, instance_paths: list[Path], class_paths: list[Path]) -> None:
        """Train on these files: rank 0's, shared with every rank before the first step (distributed.py)."""
        self.dataset_kwargs["instance_paths"] = instance_paths
        if self.dataset_kwargs["class_batch_size"]:
            self.dataset_kwargs["class_paths"] = class_paths

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * trainer.accumulate_grad_batches
        dataset = DreamBoothBatches(**self.dataset_kwargs, rank=trainer.global_rank, world_size=trainer.world_size,
                                    start_step=start)
        return make_dataloader(dataset, self.workers)
