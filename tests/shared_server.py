"""One live `guardforge serve` with the web UI for the whole test session: its home holds every kind of model the
feature tests drive through real clients, so that each test file need not pay a server's start and stop."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from tests.livesrv import LiveServer, make_home, server_env

# What the shared home's models folders hold, by the names the tests use.
CONTROLNET = "tiny-cn"
IP_ADAPTERS = ("tiny-ip", "ip-adapter_tiny")
CLIP_VISION = ("tiny-clip", "clip_h")
LORA = "pixel"
EMBEDDING = "glow"
UPSCALER = "tiny-esrgan"
VAE = "alt-vae"
SDXL, SDXL_REFINER = "tiny-xl", "tiny-xl-refiner"
# The Extras tab's "over this server's limit" answer needs a limit small enough for a test image to pass it.
MAX_IMAGE_PIXELS = 100_000


def build_shared_home(root: Path, tiny_model_dir: Path) -> Path:
    from diffusers import UNet2DConditionModel

    from tests.test_engine_embeddings import WIDTH, write_safetensors as write_embedding
    from tests.test_engine_lora import save_tiny_lora
    from tests.test_engine_refiner import save_tiny_refiner, save_tiny_sdxl
    from tests.test_vae_selection import save_other_vae
    from tests.tiny_controlnet import save_tiny_controlnet
    from tests.tiny_ip_adapter import save_clip_vision, save_ip_adapter_file
    from tests.tiny_upscalers import rrdb_state, write_safetensors

    home = make_home(root, tiny_model_dir)
    models = home / "models"
    save_tiny_controlnet(models / "ControlNet" / CONTROLNET)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    for name in IP_ADAPTERS:
        save_ip_adapter_file(models / "ipadapter" / f"{name}.safetensors", unet)
    for name in CLIP_VISION:
        save_clip_vision(models / "clip_vision" / name)
    save_tiny_lora(tiny_model_dir / "unet", models / "Lora" / f"{LORA}.safetensors")
    (models / "embeddings").mkdir(parents=True)
    write_embedding(models / "embeddings" / f"{EMBEDDING}.safetensors",
                    torch.randn((1, WIDTH), generator=torch.Generator().manual_seed(0)))
    write_safetensors(models / "ESRGAN" / f"{UPSCALER}.safetensors", rrdb_state(nb=1))
    save_other_vae(home, VAE)
    save_tiny_sdxl(models / "Stable-diffusion" / SDXL)
    save_tiny_refiner(models / "Stable-diffusion" / SDXL_REFINER)
    return home


def start_shared_server(root: Path, tiny_model_dir: Path) -> LiveServer:
    home = build_shared_home(root, tiny_model_dir)
    env = server_env(home, GUARDFORGE_LIMITS__MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS))
    return LiveServer(home, env, ui=True).start()


def job_with_prompt(url: str, prompt: str) -> dict:
    """The one job on the server whose request's prompt is `prompt` (tests on the shared server each use their own)."""
    jobs = httpx.get(f"{url}/v1/jobs", params={"limit": 500}, timeout=30).json()["jobs"]
    [job] = [job for job in jobs if job["request"]["prompt"] == prompt]
    return job


# The files that drive the shared server over HTTP import these two as their own (`from tests.shared_server import
# client, server`).
@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http
