"""Train tiny-shapes, an SD-architecture text-to-image model, stage by stage, and export it."""

from __future__ import annotations

from pathlib import Path

import torch

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.components import load_tokenizer
from guardforge_build.shapes.config import ShapesTrainConfig
from guardforge_build.shapes.decoder import finetune_decoder
from guardforge_build.shapes.export import export_final
from guardforge_build.shapes.sample_decoder import finetune_decoder_on_samples
from guardforge_build.shapes.tokenizer import write_tokenizer
from guardforge_build.shapes.unet import train_unet
from guardforge_build.shapes.vae import train_vae

STAGES = ("vae", "unet", "decoder", "sample-decoder", "export")


def train_tiny_shapes(cfg: ShapesTrainConfig, resume: bool = False, stages: tuple[str, ...] = STAGES) -> dict:
    """Run the stages (each resumable from its last checkpoint) and export the pipeline folder.

    vae and unet run in order; decoder needs only the vae (it may run beside unet); sample-decoder needs the
    unet and the decoder's VAE; export needs the unet and takes the latest VAE. A VAE stage whose folder exists
    is done and does not run again.
    """
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    tokenizer_dir = write_tokenizer(work / "tokenizer", shapes_data.vocabulary_words(), cfg.unet.max_length)
    tokenizer = load_tokenizer(tokenizer_dir)

    vae_dir = work / "vae"
    if "vae" in stages and not (vae_dir / "config.json").exists():
        report |= train_vae(cfg, work, resume)
    if "unet" in stages:
        report |= train_unet(cfg, work, tokenizer, vae_dir, resume)
    if "decoder" in stages and not (work / "vae-decoder" / "config.json").exists():
        report |= finetune_decoder(cfg, work, resume)
    if "sample-decoder" in stages and not (work / "vae-sampled" / "config.json").exists():
        report |= finetune_decoder_on_samples(cfg, work, resume)
    if "export" in stages:
        report["exported"] = str(export_final(cfg, work))
    return report
