"""What a finished job recorded, typed: written by the worker as JSON in the job's row, read back into these models
by the queue, so that the API, the A1111 answers and the UI read fields, not string keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from guardforge.guard.verdict import Verdict


class ImageResult(BaseModel):
    """One image a generation made. Its pixels are the job's image rows (withheld when `action` is block)."""

    image_id: str
    seed: int
    subseed: int | None = None
    infotext: str
    width: int
    height: int
    verdict: Verdict | None = None  # None when the guard was off
    action: Literal["allow", "flag", "blur", "block"] = "allow"


class GenerationJobResult(BaseModel):
    """A `generate` job's outcome: no server paths, no pixels."""

    images: list[ImageResult] = []
    seeds: list[int] = []
    subseeds: list[int] = []
    model: str
    model_hash: str | None = None
    vae: str | None = None  # the VAE used in place of the checkpoint's own (its file name, as A1111 names it)
    vae_hash: str | None = None
    elapsed_s: float = 0.0
    prompt_verdict: Verdict | None = None
    blocked: bool = False  # the prompt or the input image was blocked: the engine never ran
    device: str | None = None  # where the engine ran; with `worker`, which worker (two may share a device)
    worker: int | None = None
    interrupted: bool = False  # A1111's interrupt ended it early; what was made is delivered


class TrainingJobResult(BaseModel):
    """A `dreambooth` job's outcome: registry names and file names in the models folder, not server paths."""

    models: dict[str, str] = {}  # format -> the registry name to generate with
    exports: dict[str, str] = {}  # format -> file or folder name in the models folder
    steps: int
    final_loss: float | None = None
    class_images_generated: int = 0
    class_images_reused: int = 0
    refused_class_seeds: dict[str, list[int]] = {}
    elapsed_s: float = 0.0
    device: str | None = None
    worker: int | None = None


class GridCellSummary(BaseModel):
    """One cell of an X/Y/Z plot: its place on the axes (indexes), its labels, and its image among the job's."""

    x: int
    y: int
    z: int
    labels: list[str]
    image_index: int | None = None  # into the job's images; None: blocked before generation, or never run
    seed: int | None = None
    ran: bool = True  # False: the grid was interrupted before this cell
    blocked: bool = False  # the guard blocked its prompt (nothing ran) or its image (withheld)
    prompt_verdict: Verdict | None = None


class GridJobResult(BaseModel):
    """A `grid` job's outcome: its images are the grid (then the sub-grids, `grid_count` in all) followed by each
    cell's image, in the order of the job's image rows."""

    images: list[ImageResult] = []
    grid_count: int = 1
    cells: list[GridCellSummary] = []
    labels: list[list[str]] = []  # X's, Y's and Z's labels
    elapsed_s: float = 0.0
    device: str | None = None
    worker: int | None = None
    interrupted: bool = False

    @classmethod
    def of(cls, result, interrupted: bool = False, worker: int | None = None) -> GridJobResult:
        """The summary of an engine GridResult: no server paths, no pixels."""
        images = [ImageResult.model_validate(image.model_dump()) for image in result.grids]
        cells = []
        for cell in result.cells:
            index = None
            if cell.image is not None:
                index = len(images)
                images.append(ImageResult.model_validate(cell.image.model_dump()))
            generation = cell.result
            cells.append(GridCellSummary(
                x=cell.ix, y=cell.iy, z=cell.iz, labels=cell.labels, image_index=index,
                seed=generation.seeds[0] if generation and generation.seeds else None, ran=generation is not None,
                blocked=cell.blocked, prompt_verdict=generation.prompt_verdict if generation else None))
        return cls(images=images, grid_count=len(result.grids), cells=cells, labels=result.labels,
                   elapsed_s=result.elapsed_s, device=result.device, worker=worker,
                   interrupted=interrupted or result.interrupted)


JobResult = GenerationJobResult | TrainingJobResult | GridJobResult
RESULT_TYPES: dict[str, type[BaseModel]] = {"generate": GenerationJobResult, "dreambooth": TrainingJobResult,
                                            "grid": GridJobResult}


def parse_result(kind: str, data: dict | None) -> JobResult | None:
    """The stored JSON of a job of `kind` as its result model (None: the job has not succeeded)."""
    if data is None:
        return None
    return RESULT_TYPES[kind].model_validate(data)
