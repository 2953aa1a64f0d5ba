"""Stage 4 of tiny-shapes: the decoder fine-tuned on the UNet's own samples of captions that fix the whole image.

On this data a caption that states size, colour, shape, position and background determines every pixel, so
each sample the trained UNet draws for one has an exact target: the generator's image of that scene. Guided
sampling (CFG well above 1) overshoots the latents the decoder was trained on, by about a fifth in every
channel and more on the object, and the decoder turns such latents into wrong colours (a green star decodes
black). Fine-tuning the decoder on (sampled latents, true image) pairs, beside posterior means so that plain
decoding keeps its quality, teaches it to decode what the UNet actually produces. Only training pairs are
sampled: the held-out colour/shape pairs stay unseen by every stage.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import torch

from guardforge.train.shapes import data
from guardforge.train.shapes.adherence import true_pixels
from guardforge_build.shapes.components import make_pipeline
from guardforge_build.shapes.config import SampleDecoderConfig, ShapesTrainConfig
from guardforge_build.shapes.decoder import DecoderModule
from guardforge_build.shapes.export import load_trained
from guardforge_build.shapes.stage import StageRun, encode_latents, images_to_tensor, probe_images


def fully_described_scenes(n: int, seed: int) -> list[tuple[data.Scene, str]]:
    """n single-object training scenes, each with a varied caption that states every attribute."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(n):
        background = rng.choice(data.COLOURS)
        scene = data.Scene(background, [data.random_object(rng, background, rng.choice(list(data.POSITIONS)))])
        scenes.append((scene, data.describe(scene, rng, say_size=True, say_position=True)))
    return scenes


@torch.no_grad()
def sample_pairs(pipe, cfg: SampleDecoderConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, images): the pipeline's final latents, unscaled as the decoder takes them, and the true images
    in [-1, 1] of the scenes their captions describe."""
    scenes = fully_described_scenes(cfg.n_samples, seed)
    rng = random.Random(seed + 1)
    latents = []
    for start in range(0, len(scenes), cfg.sample_batch):
        chunk = [caption for _, caption in scenes[start:start + cfg.sample_batch]]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + i) for i in range(len(chunk))]
        latents.append(pipe(chunk, num_inference_steps=cfg.steps, guidance_scale=rng.uniform(*cfg.cfg_range),
                            generator=generators, output_type="latent").images)
    pixels = true_pixels([(scene.objects[0], scene.background, caption) for scene, caption in scenes])
    return torch.cat(latents) / pipe.vae.config.scaling_factor, pixels


class PairDataModule(L.LightningDataModule):
    """(latents, images) from two pools, drawn so that `first_fraction` of the examples come from the first."""

    def __init__(self, first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
                 first_fraction: float, batch_size: int):
        super().__init__()
        self.first, self.second, self.first_fraction, self.batch_size = first, second, first_fraction, batch_size

    def train_dataloader(self):
        dataset = torch.utils.data.TensorDataset(torch.cat([self.first[0], self.second[0]]),
                                                 torch.cat([self.first[1], self.second[1]]))
        n_first, n_second = len(self.first[0]), len(self.second[0])
        weights = torch.cat([torch.full((n_first,), self.first_fraction / n_first),
                             torch.full((n_second,), (1 - self.first_fraction) / n_second)])
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)


def finetune_decoder_on_samples(cfg: ShapesTrainConfig, work: Path, resume: bool) -> dict:
    """Stage 4: the decoder fine-tuned on the trained UNet's own guided samples beside posterior means;
    writes work/vae-sampled. The samples are kept (decoder-samples.pt), so a resumed run does not redraw them."""
    sd = cfg.sample_decoder
    run = StageRun(work, "sample-decoder", cfg.seed + 4)
    vae, unet, text_encoder, tokenizer = load_trained(cfg, work)
    samples_file = work / "decoder-samples.pt"
    if resume and samples_file.exists():
        saved = torch.load(samples_file)
        latents, images = saved["latents"], saved["images"]
    else:
        pipe = make_pipeline(vae, unet, text_encoder, tokenizer)
        pipe.set_progress_bar_config(disable=True)
        latents, images = sample_pairs(pipe, sd, seed=cfg.seed + 4)
        torch.save({"latents": latents, "images": images}, samples_file)
    sampling_minutes = run.minutes()
    dataset_images = images_to_tensor(data.make_dataset(sd.n_images, seed=cfg.seed + 5)[0])
    posterior = (encode_latents(vae, dataset_images), dataset_images)
    module = DecoderModule(vae, sd.lr, name="sample_decoder")
    steps = run.fit(module, PairDataModule((latents, images), posterior, sd.sample_fraction, sd.batch_size),
                    sd.max_steps, sd.max_minutes, resume)
    return run.save_vae(module.vae.eval(), "vae-sampled", probe_images(cfg), steps,
                        sampling_minutes=sampling_minutes)
