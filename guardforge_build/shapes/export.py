"""Stage 5 of tiny-shapes, and the UNet stage's exports on the way: a diffusers folder of the trained parts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from guardforge_build.shapes.components import (
    build_text_encoder,
    build_unet,
    latent_size,
    load_tokenizer,
    make_pipeline,
)
from guardforge_build.shapes.config import ShapesTrainConfig

# Each VAE stage writes its own folder; later stages and the export take the latest one that exists.
VAE_FOLDERS = ("vae-sampled", "vae-decoder", "vae")


def export_pipeline(vae, unet, text_encoder, tokenizer, folder: Path) -> Path:
    """Save a diffusers folder (safetensors), writing into a temp folder first so readers never see half."""
    import shutil

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = make_pipeline(vae, unet, text_encoder, tokenizer)
    pipe.save_pretrained(tmp, safe_serialization=True)
    card = folder / "MODEL_CARD.md"
    if card.exists():  # the card is written by hand from measured figures; keep it across exports
        shutil.copy(card, tmp / "MODEL_CARD.md")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class ExportCallback(L.Callback):
    """Every N steps, export the pipeline (the EMA weights when averaging) so a usable model exists while
    training goes on."""

    def __init__(self, vae, tokenizer, folder: Path, every: int, ema=None):
        self.vae, self.tokenizer, self.folder, self.every, self.ema = vae, tokenizer, folder, every, ema

    def _shipped(self, module):
        # Lightning keeps the average in a private AveragedModel; it wraps a copy of the whole module.
        average = getattr(self.ema, "_average_model", None)
        return average.module if average is not None else module

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step and step % self.every == 0:
            shipped = self._shipped(module)
            export_pipeline(self.vae, shipped.unet, shipped.text_encoder, self.tokenizer, self.folder)
            print(f"[step {step}] exported to {self.folder}", flush=True)

    def on_train_end(self, trainer, module):
        shipped = self._shipped(module)
        export_pipeline(self.vae, shipped.unet, shipped.text_encoder, self.tokenizer, self.folder)


def latest_vae_dir(work: Path) -> Path:
    return next((work / name for name in VAE_FOLDERS if (work / name / "config.json").exists()), work / "vae")


def load_trained(cfg: ShapesTrainConfig, work: Path):
    """(vae, unet, text_encoder, tokenizer): the latest VAE and the UNet checkpoint's weights (the EMA when
    averaging)."""
    from diffusers import AutoencoderKL

    tokenizer = load_tokenizer(work / "tokenizer")
    vae = AutoencoderKL.from_pretrained(latest_vae_dir(work)).eval()
    unet = build_unet(cfg.unet, vae.config.latent_channels, latent_size(cfg.vae))
    text_encoder = build_text_encoder(cfg.unet, tokenizer)
    state = torch.load(work / "unet-ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")},
                                 strict=False)  # position_ids buffers may or may not be saved
    return vae, unet.eval(), text_encoder.eval(), tokenizer


def export_final(cfg: ShapesTrainConfig, work: Path) -> Path:
    """Stage 5: the UNet and text encoder of the last checkpoint with the latest VAE into the shipped folder."""
    vae, unet, text_encoder, tokenizer = load_trained(cfg, work)
    return export_pipeline(vae, unet, text_encoder, tokenizer, Path(cfg.export_dir))
