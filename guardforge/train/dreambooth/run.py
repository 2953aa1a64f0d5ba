"""train_dreambooth: screen the data, make class images, fit with Lightning, export into the models folder."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING

from pydantic import BaseModel

from guardforge.dependencies import require_lora_support
from guardforge.errors import Cancelled, InvalidRequest
from guardforge.train.dreambooth.config import DreamBoothConfig, TrainProgress
from guardforge.train.dreambooth.services import BaseComponents, DreamBoothServices

if TYPE_CHECKING:
    from guardforge.train.dreambooth.class_images import ClassImageReport
    from guardforge.train.dreambooth.distributed import SharePreparation

ProgressFn = Callable[[TrainProgress], None]


class TrainingCancelled(Cancelled):
    """Training stopped between two steps on request; a checkpoint at `step` was saved to resume from."""

    def __init__(self, message: str, step: int, total: int):
        super().__init__(message)
        self.step = step
        self.total = total


class DreamBoothResult(BaseModel):
    """What a finished run left behind (the API returns it as JSON)."""

    output_dir: Path
    steps: int
    final_loss: float | None = None
    exports: dict[str, Path] = {}  # format -> path; the registry lists them under the export name
    models: dict[str, str] = {}  # format -> the name the registry lists that export under
    class_images_generated: int = 0
    class_images_reused: int = 0
    refused_class_seeds: dict[int, list[int]] = {}
    elapsed_s: float = 0.0
    rank: int = 0  # the process's global rank in a multi-process run: only rank 0 exports and reports


def checkpoint_dir(config: DreamBoothConfig) -> Path:
    return config.output_dir / "checkpoints"


def resolve_resume(config: DreamBoothConfig, resume: str | Path | None) -> Path | None:
    """`latest` is the newest checkpoint of this output folder; anything else is a checkpoint path."""
    if resume is None:
        return None
    if str(resume) == "latest":
        folder = checkpoint_dir(config)
        candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
        if not candidates:
            raise InvalidRequest(f"--resume latest: no checkpoint in {folder}")
        # Newest, not last.ckpt by name: Lightning writes step-N.ckpt before last.ckpt, and a run killed in
        # between has its newest state in step-N.ckpt (a cancelled run's last.ckpt is its newest file).
        return candidates[-1]
    path = Path(resume)
    if not path.is_file():
        raise InvalidRequest(f"--resume: no checkpoint file at {path}")
    return path


def build_module(config: DreamBoothConfig, base: BaseComponents):
    from diffusers import DDPMScheduler

    from guardforge.train.dreambooth.module import DreamBoothModule

    # Training noise follows the DDPM schedule of the base model's scheduler config (betas, prediction type).
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    return DreamBoothModule(config, unet=base.unet, vae=base.vae, text_encoder=base.text_encoder,
                            tokenizer=base.tokenizer, noise_scheduler=noise_scheduler,
                            inference_scheduler=base.scheduler)


def build_logger(config: DreamBoothConfig):
    from lightning.pytorch import loggers

    save_dir = str(config.output_dir / "logs")
    if config.logger == "tensorboard":
        return loggers.TensorBoardLogger(save_dir, name="", version="")
    if config.logger == "csv":
        return loggers.CSVLogger(save_dir, name="", version="")
    return loggers.WandbLogger(save_dir=save_dir, project="guardforge-dreambooth",
                               name=config.resolved_export_name)


def build_strategy(config: DreamBoothConfig):
    if config.strategy != "fsdp":
        return config.strategy
    from guardforge.train.dreambooth.fsdp import fsdp_strategy

    return fsdp_strategy()


def build_trainer(config: DreamBoothConfig, callbacks: list):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir(config), filename="step-{step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_interval, save_last=True,
        # "step" is always among ModelCheckpoint's monitor candidates: keep the newest N.
        monitor="step", mode="max", save_top_k=config.checkpoints_to_keep)
    return L.Trainer(
        accelerator=config.accelerator, strategy=build_strategy(config), devices=config.devices,
        num_nodes=config.num_nodes, precision=config.precision, max_steps=config.max_steps,
        accumulate_grad_batches=config.gradient_accumulation_steps,
        gradient_clip_val=config.max_grad_norm, logger=build_logger(config),
        callbacks=[checkpoints, *callbacks], enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=str(config.output_dir), num_sanity_val_steps=0,
        use_distributed_sampler=False,  # batches are already per-rank (see data.py)
    )


def fit(config: DreamBoothConfig, base: BaseComponents, instance_paths: list[Path], class_paths: list[Path],
        *, progress: ProgressFn | None = None, cancel: Event | None = None, resume: str | Path | None = None,
        screen=None, extra_callbacks: list | None = None, share: SharePreparation | None = None):
    """Train on screened data. Returns (module, trainer); raises Cancelled after saving a resumable checkpoint.

    With `share` (train_dreambooth's, on every rank) every rank trains on rank 0's files or raises its error
    (distributed.py); without it, each process trains on the paths given.

    The module returned holds the trained weights, unwrapped (under FSDP, on rank 0: a gathered copy; on the
    other ranks the sharded module, which is not for export). `extra_callbacks` are Lightning callbacks added
    after ours (the benchmark times steps with one).
    """
    import lightning as L
    import torch

    from guardforge.train.dreambooth.callbacks import (
        CancelOnEvent,
        GatheredCopy,
        ProgressReporter,
        ValidationImages,
    )
    from guardforge.train.dreambooth.data import (
        DreamBoothDataModule,
        ImageTransform,
        tokenize,
    )

    ckpt_path = resolve_resume(config, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    gathered = None
    if config.strategy == "fsdp":
        from lightning.fabric.utilities.rank_zero import _get_rank

        # Only rank 0 renders and exports, so only it keeps a copy. The rank is known from the environment
        # here: Lightning's launcher starts the other ranks with theirs set.
        holder = (_get_rank() or 0) == 0
        with torch.random.fork_rng(devices=[]):  # the copy's LoRA init must not shift the run's random draws
            gathered = GatheredCopy(build_module(config, copy.deepcopy(base)) if holder else None)
    module = build_module(config, base)
    class_batch = config.resolved_class_batch_size
    datamodule = DreamBoothDataModule({
        "instance_paths": instance_paths, "class_paths": class_paths if class_batch else [],
        "instance_batch_size": config.train_batch_size, "class_batch_size": class_batch,
        "transform": ImageTransform(config.resolution, config.center_crop, config.random_flip),
        "instance_input_ids": tokenize(base.tokenizer, config.instance_prompt),
        "class_input_ids": tokenize(base.tokenizer, config.class_prompt) if class_batch else None,
        "seed": config.seed}, workers=config.dataloader_workers)

    canceller = CancelOnEvent(cancel or Event())
    # Order matters: a cancel set from inside the progress callback must stop this very step.
    callbacks = [ProgressReporter(progress)] if progress is not None else []
    callbacks += [ValidationImages(
        config.validation_prompts, config.validation_interval, config.output_dir, seed=config.validation_seed,
        steps=config.validation_steps, resolution=config.resolution, screen=screen, gathered=gathered),
        canceller]
    callbacks += extra_callbacks or []
    if share is not None:
        callbacks.insert(0, share)
    trainer = build_trainer(config, callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if canceller.cancelled and trainer.global_step < config.max_steps:
        path = checkpoint_dir(config) / "last.ckpt"
        trainer.save_checkpoint(path)
        raise TrainingCancelled(f"training cancelled at step {trainer.global_step}/{config.max_steps}; "
                                f"checkpoint saved, continue with --resume latest",
                                step=trainer.global_step, total=config.max_steps)
    if gathered is not None:
        # After fit, on every rank (the gather is collective), whether or not a step ran: a run resumed at
        # max_steps trains nothing, and its copy must still receive the checkpoint's weights.
        copy_ = gathered.refresh(trainer)
        if copy_ is not None:
            return copy_, trainer
    return module, trainer


# -- Orchestration -----------------------------------------------------------------------------------------

def prepare_data(services: DreamBoothServices, config: DreamBoothConfig, emit: ProgressFn,
                 cancel: Event) -> tuple[list[Path], list[Path], ClassImageReport | None]:
    """Screen the instance images and prompts, make (or reuse and screen) the class images; rank 0 only."""
    from guardforge.train.dreambooth.class_images import class_image_name, ensure_class_images
    from guardforge.train.dreambooth.data import list_images

    emit(TrainProgress(phase="screening", message="checking the instance images and prompts"))
    instance_paths = list_images(config.instance_data_dir)
    if not instance_paths:
        raise InvalidRequest(f"{config.instance_data_dir} holds no images (.png, .jpg, .jpeg, .webp, .bmp)")
    prompts = [config.instance_prompt, *([config.class_prompt] if config.class_prompt else []),
               *config.validation_prompts]
    services.screen_training_data(instance_paths, prompts)

    class_paths: list[Path] = []
    report = None
    if config.with_prior_preservation:
        folder = config.resolved_class_data_dir
        missing = [i for i in range(config.num_class_images) if not (folder / class_image_name(i)).is_file()]
        if missing and (Path(config.base_model) / "model_index.json").is_file():
            raise InvalidRequest(
                "class images are made through the model registry: put the base model in <models>/Stable-diffusion/ "
                f"and name it, or fill class_data_dir yourself ({len(missing)} of {config.num_class_images} missing)")
        options = config.class_images
        report = ensure_class_images(
            services.generate_class_image, services.model_hash, folder=folder, count=config.num_class_images,
            prompt=config.class_prompt, model=config.base_model, resolution=config.resolution, seed=options.seed,
            sampler=options.sampler, steps=options.steps, cfg_scale=options.cfg_scale,
            negative_prompt=options.negative_prompt, cancel=cancel, on_image=lambda done, total: emit(TrainProgress(
                phase="class_images", step=done, total=total, message="class images")))
        class_paths = report.paths
        # Images made here were screened as outputs; the ones found on disk (the user's own, or files put where
        # ours were) are trained on just the same, so they are training data like the instance images.
        emit(TrainProgress(phase="screening", message="checking the class images found on disk"))
        services.screen_training_data([report.paths[i] for i in report.reused], [])
    return instance_paths, class_paths, report


def train_dreambooth(services: DreamBoothServices, config: DreamBoothConfig, progress: ProgressFn | None = None,
                     cancel: Event | None = None, resume: str | Path | None = None,
                     overwrite_exports: bool = True) -> DreamBoothResult:
    """Screen the data, make the class images, train, export into the models folder, have the exports listed.

    `services` is all this asks of the rest of guardforge (see services.py). With `overwrite_exports=False` an
    export whose files exist fails the run instead of replacing them.
    """
    from guardforge.train.dreambooth.distributed import (
        Prepared,
        SharePreparation,
        is_rank_zero,
        others_started,
    )
    from guardforge.train.dreambooth.export import export_all

    if config.mode == "lora":
        require_lora_support()
    started = time.perf_counter()
    rank_zero = is_rank_zero()
    # One progress display, one report: the other ranks' steps are the same steps.
    emit = progress if progress is not None and rank_zero else (lambda event: None)
    cancel = cancel or Event()

    prepared, report = None, None
    if rank_zero:
        try:
            instance_paths, class_paths, report = prepare_data(services, config, emit, cancel)
            prepared = Prepared(instance_paths, class_paths)
        except Exception as exc:
            if not others_started(config):
                raise
            # The other ranks wait for rank 0 in the process group: join it to hand them the error.
            prepared = Prepared(error=exc)

    base = services.load_base(config.base_model)
    losses: list[float] = []

    def on_step(event: TrainProgress) -> None:
        if event.loss is not None:
            losses.append(event.loss)
        emit(event)

    module, trainer = fit(config, base, [], [], progress=on_step, cancel=cancel, resume=resume,
                          screen=services.screen_outputs, share=SharePreparation(prepared))

    emit(TrainProgress(phase="exporting", step=trainer.global_step, total=config.max_steps))
    exports: dict[str, Path] = {}
    models: dict[str, str] = {}
    if trainer.is_global_zero:
        exports = export_all(module, config.resolved_export_formats, services.models_dir,
                             config.resolved_export_name, alpha=config.lora.alpha, overwrite=overwrite_exports)
        models = services.register_exports(exports)
    emit(TrainProgress(phase="done", step=trainer.global_step, total=config.max_steps,
                       loss=losses[-1] if losses else None))
    return DreamBoothResult(
        output_dir=config.output_dir, steps=trainer.global_step, final_loss=losses[-1] if losses else None,
        exports=exports, models=models, class_images_generated=len(report.generated) if report else 0,
        class_images_reused=len(report.reused) if report else 0,
        refused_class_seeds=report.refused_seeds if report else {}, elapsed_s=time.perf_counter() - started,
        rank=trainer.global_rank)
