"""A canny ControlNet for tiny-shapes: diffusers' ControlNetModel trained beside the frozen shipped pipeline.

The ControlNet starts as a copy of the tiny-shapes UNet's encoder (`ControlNetModel.from_unet`, zero
convolutions out) and learns, with the UNet, VAE and text encoder frozen, to steer the UNet's noise prediction
from the canny edges of the scene it should draw. The captions mostly leave the position out: tiny-shapes was
trained to draw an object with no stated position in the centre, so where the object goes has to come from the
control image for the loss to fall.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field

from guardforge.train.shapes import data as shapes_data
from guardforge_build.shapes.components import build_noise_scheduler
from guardforge_build.shapes.stage import StageRun, encode_latents, images_to_tensor

DEFAULT_BASE = Path(__file__).resolve().parents[2] / "guardforge" / "assets" / "models" / "tiny-shapes"
# Scenes with two objects sit on opposite sides, as in the base model's data.
_OPPOSITE_SIDES = [("left", "right"), ("top", "bottom")]


class ControlNetTrainConfig(BaseModel):
    """configs/tiny-shapes-controlnet.yaml: the data, the optimisation, the time box and where it all goes."""

    model_config = ConfigDict(extra="forbid")

    base_model: Path = DEFAULT_BASE
    work_dir: Path = Path("runs/tiny-shapes-controlnet")
    # Overwriting the shipped ControlNet takes a config that names it, as for tiny-shapes itself.
    export_dir: Path = Path("runs/tiny-shapes-controlnet/export")
    seed: int = 0
    threads: int = Field(1, ge=1)
    n_images: int = Field(8000, ge=1)
    two_object_rate: float = Field(0.25, ge=0.0, le=1.0)
    # Share of captions whose position words are left out: position must come from the edges.
    drop_position_rate: float = Field(0.75, ge=0.0, le=1.0)
    # Empty captions, so the ControlNet also steers the unconditional half of classifier-free guidance.
    uncond_rate: float = Field(0.1, ge=0.0, le=1.0)
    # The product's canny preprocessor runs at the unit's processor_res (A1111's default 512) and the map is
    # fitted to the generation size (area-shrunk, cut back to black and white); this share of the edge maps is
    # made that way at 128, 256 or 512, the rest by cv2.Canny on the 64x64 scene itself (processor_res 64, or
    # pixel perfect).
    upscaled_edge_rate: float = Field(0.3, ge=0.0, le=1.0)
    canny_low: int = 100
    canny_high: int = 200
    # Widths of the conditioning embedding: two stride-2 steps take 64x64 edges to the 16x16 latent (f=4).
    conditioning_channels: list[int] = [16, 32, 64]
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(100, ge=1)
    # Share of each batch whose timestep is drawn towards the noisy end (t = T(1 - u^3), as T2I-Adapter does):
    # the object's place and outline are decided there, the last steps only sharpen.
    high_noise_rate: float = Field(0.5, ge=0.0, le=1.0)
    max_steps: int = Field(3000, ge=1)
    max_minutes: float = Field(30.0, gt=0.0)
    export_every_n_steps: int = Field(250, ge=1)

    @classmethod
    def from_yaml(cls, path: Path) -> ControlNetTrainConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


def canny_edges(image: np.ndarray, low: int = 100, high: int = 200, resolution: int | None = None) -> np.ndarray:
    """White-on-black edges (H, W, 3) uint8 of an RGB uint8 image, made by the product's own preparation of a
    canny unit for a generation of the image's size (engine/controlnet.py: the canny module at `resolution` on
    the short side, then fitted back, a black-and-white map area-shrunk and cut at Otsu's threshold), so that
    training sees exactly what inference will."""
    from PIL import Image

    from guardforge.engine.controlnet import prepare_unit
    from guardforge.engine.controlnet_unit import ControlNetUnit

    height, width = image.shape[:2]
    unit = ControlNetUnit(module="canny", model="tiny-shapes-canny", threshold_a=low, threshold_b=high,
                          processor_res=resolution or min(height, width))
    return np.asarray(prepare_unit(unit, Image.fromarray(image), (width, height), seed=0).image)


def random_scene(rng: random.Random, two_object_rate: float, drop_position_rate: float
                 ) -> tuple[shapes_data.Scene, str, bool]:
    """A training scene of seen colour/shape pairs (uniform over the five places), its caption, and whether
    the caption states the position."""
    background = rng.choice(shapes_data.COLOURS)
    if rng.random() < two_object_rate:
        first_pos, second_pos = rng.choice(_OPPOSITE_SIDES)
        if rng.random() < 0.5:
            first_pos, second_pos = second_pos, first_pos
        first = shapes_data.random_object(rng, background, first_pos)
        second = shapes_data.random_object(rng, background, second_pos, exclude_colour=first.colour)
        scene = shapes_data.Scene(background, [first, second])
    else:
        position = rng.choice(list(shapes_data.POSITIONS))
        scene = shapes_data.Scene(background, [shapes_data.random_object(rng, background, position)])
    say_position = rng.random() >= drop_position_rate
    caption = shapes_data.describe(scene, rng, say_size=rng.random() < 0.7, say_position=say_position)
    return scene, caption, say_position


def make_control_dataset(cfg: ControlNetTrainConfig, seed: int
                         ) -> tuple[np.ndarray, np.ndarray, list[str], list[shapes_data.Scene]]:
    """(images (n, 64, 64, 3) uint8, edges (n, 64, 64) uint8, captions, scenes), reproducible from the seed."""
    rng = random.Random(seed)
    n = cfg.n_images
    images = np.empty((n, shapes_data.SIZE, shapes_data.SIZE, 3), dtype=np.uint8)
    edges = np.empty((n, shapes_data.SIZE, shapes_data.SIZE), dtype=np.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene, caption, _ = random_scene(rng, cfg.two_object_rate, cfg.drop_position_rate)
        images[i] = np.asarray(shapes_data.render(scene))
        resolution = rng.choice([128, 256, 512]) if rng.random() < cfg.upscaled_edge_rate else None
        edges[i] = canny_edges(images[i], cfg.canny_low, cfg.canny_high, resolution)[:, :, 0]
        captions.append(caption)
        scenes.append(scene)
    return images, edges, captions, scenes


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, captions: list[str], batch_size: int = 512) -> torch.Tensor:
    """The frozen text encoder's last hidden states, padded as the pipeline pads them."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    text_encoder.eval()
    return torch.cat([text_encoder(ids[i:i + batch_size]).last_hidden_state
                      for i in range(0, len(ids), batch_size)])


class ControlDataModule(L.LightningDataModule):
    """Scaled latents of the scenes, their edge maps and their captions' text states, computed once: the VAE
    and the text encoder are frozen, so a training step runs only the ControlNet and the UNet."""

    def __init__(self, cfg: ControlNetTrainConfig, vae, text_encoder, tokenizer, seed: int):
        super().__init__()
        self.cfg, self.vae, self.text_encoder, self.tokenizer, self.seed = cfg, vae, text_encoder, tokenizer, seed

    def setup(self, stage=None):
        if getattr(self, "dataset", None) is not None:
            return
        images, edges, captions, _ = make_control_dataset(self.cfg, self.seed)
        latents = encode_latents(self.vae, images_to_tensor(images)) * self.vae.config.scaling_factor
        states = encode_prompts(self.text_encoder, self.tokenizer, captions)
        self.empty_state = encode_prompts(self.text_encoder, self.tokenizer, [""])[0]
        self.dataset = torch.utils.data.TensorDataset(latents, torch.from_numpy(edges)[:, None], states)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.batch_size, shuffle=True,
                                           drop_last=True)


def build_controlnet(unet, conditioning_channels: list[int]):
    """The ControlNet as a copy of the UNet's encoder and middle block, its outputs zero-initialised."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(conditioning_channels))


class ControlNetModule(L.LightningModule):
    """The v-prediction loss of the frozen UNet with the ControlNet's residuals added; only the ControlNet learns."""

    def __init__(self, cfg: ControlNetTrainConfig, controlnet, unet, noise_scheduler, empty_state: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.controlnet = controlnet
        self.unet = unet.requires_grad_(False).eval()
        self.noise_scheduler = noise_scheduler
        self.register_buffer("empty_state", empty_state, persistent=False)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone(), persistent=False)

    def on_train_epoch_start(self):
        self.unet.eval()  # Lightning puts the whole module in train mode; the frozen UNet stays as shipped

    def sample_timesteps(self, n: int, device) -> torch.Tensor:
        T = len(self.alphas_cumprod)
        u = torch.rand(n, device=device)
        high = torch.rand(n, device=device) < self.cfg.high_noise_rate
        t = torch.where(high, (1 - u ** 3) * T, u * T)
        return t.long().clamp(0, T - 1)

    def loss(self, latents: torch.Tensor, edges: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(len(states), device=states.device) < self.cfg.uncond_rate
        states = torch.where(drop[:, None, None], self.empty_state.expand_as(states), states)
        control = (edges.float() / 255.0).expand(-1, 3, -1, -1)  # the pipeline's control image: RGB in [0, 1]
        noise = torch.randn_like(latents)
        t = self.sample_timesteps(len(latents), latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = self.noise_scheduler.get_velocity(latents, noise, t)
        down, mid = self.controlnet(noisy, t, states, controlnet_cond=control, return_dict=False)
        pred = self.unet(noisy, t, states, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        return F.mse_loss(pred, target)

    def training_step(self, batch, batch_idx):
        loss = self.loss(*batch)
        self.log("controlnet/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.controlnet.parameters(), lr=self.cfg.lr, weight_decay=1e-2)
        warmup = self.cfg.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def export_controlnet(controlnet, folder: Path, card: str | None = None) -> Path:
    """Save a diffusers ControlNet folder (safetensors) through a temp folder, so readers never see half; a
    MODEL_CARD.md already there is kept unless a new one is given."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    controlnet.save_pretrained(tmp, safe_serialization=True)
    if card is not None:
        (tmp / "MODEL_CARD.md").write_text(card)
    elif (folder / "MODEL_CARD.md").exists():
        shutil.copy(folder / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class ControlNetExportCallback(L.Callback):
    """Every N steps, export the ControlNet, so a usable one exists (and can be measured) while training goes on."""

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = Path(folder), every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step and step % self.every == 0:
            export_controlnet(module.controlnet, self.folder)
            print(f"[step {step}] exported to {self.folder}", flush=True)


def load_frozen(base: Path):
    """The shipped pipeline's VAE, UNet, text encoder, tokenizer and the noise schedule it was trained with."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = Path(base)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    return vae, unet, text_encoder, tokenizer, build_noise_scheduler()


def train_controlnet(cfg: ControlNetTrainConfig, resume: bool = False) -> dict:
    """Train the ControlNet against the frozen base model and export it; the report, also in the work folder."""
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    vae, unet, text_encoder, tokenizer, noise_scheduler = load_frozen(cfg.base_model)
    run = StageRun(work, "controlnet", cfg.seed, label="ControlNet")
    controlnet = build_controlnet(unet, cfg.conditioning_channels)
    datamodule = ControlDataModule(cfg, vae, text_encoder, tokenizer, cfg.seed + 1)
    datamodule.setup()
    module = ControlNetModule(cfg, controlnet, unet, noise_scheduler, datamodule.empty_state)
    steps = run.fit(module, datamodule, cfg.max_steps, cfg.max_minutes, resume,
                    [ControlNetExportCallback(cfg.export_dir, cfg.export_every_n_steps)])
    export_controlnet(module.controlnet, cfg.export_dir)
    report = run.report({
        "controlnet_steps": steps, "controlnet_minutes_this_run": run.minutes(),
        "controlnet_params_m": sum(p.numel() for p in controlnet.parameters()) / 1e6,
        "controlnet_final_loss": float(module.trainer.callback_metrics.get("controlnet/loss", float("nan"))),
    })
    return report
