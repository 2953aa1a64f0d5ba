"""IP-Adapter on the engine's pipelines: the adapter's weights loaded into the request's (shared, cached) UNet for
one run with diffusers' load_ip_adapter, the image encoder lent to the pipeline, and everything put back after,
so the next request on the same pipeline runs as if no adapter had been there.

Infotext: sd-webui-controlnet keeps IP-Adapter as a ControlNet unit and writes it as one (`ControlNet N: "Module:
ip-adapter_clip_sd15, Model: ip-adapter_sd15 [hash], Weight: 0.6, ..."`); guardforge writes the same line after
its ControlNet units and reads such a unit back as the request's ip_adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from guardforge.engine.ip_adapter_unit import IPAdapterUnit
from guardforge.errors import InvalidRequest

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from guardforge.models.cache import LoadedModel
    from guardforge.models.ipadapter_cache import EncoderCache
    from guardforge.models.ipadapter_loading import AdapterShape
    from guardforge.models.registry import ModelEntry
    from guardforge.settings import Settings


def is_ip_adapter_module(module: Any) -> bool:
    """sd-webui-controlnet's IP-Adapter preprocessors: ip-adapter_clip_sd15, ip-adapter_clip_sdxl, _h, _g, ..."""
    return str(module or "").strip().lower().startswith("ip-adapter")


def _cross_attention_layers(unet) -> int:
    return sum(1 for name in unet.attn_processors if not name.endswith("attn1.processor"))


def check_unet_fit(adapter: AdapterShape, name: str, cross_attention_dim: int | None, checkpoint: str) -> None:
    if cross_attention_dim is not None and cross_attention_dim != adapter.cross_attention_dim:
        raise InvalidRequest(
            f"IP-Adapter {name!r} does not fit checkpoint {checkpoint!r}: it was made for cross-attention "
            f"{adapter.cross_attention_dim}, the checkpoint's UNet has {cross_attention_dim} (an SD 1.x adapter "
            "needs an SD 1.x checkpoint, an SDXL one SDXL)")


@dataclass
class IPAdapterInputs:
    """The request's IP-Adapter between the Studio and the engine: its image as sent (guarded as an input image),
    its adapter and encoder entries, checked against each other."""

    unit: IPAdapterUnit
    image: Image.Image
    entry: ModelEntry
    encoder: ModelEntry
    shape: AdapterShape

    @property
    def guarded(self) -> list[Image.Image]:
        return [self.image]

    def run(self, encoders: EncoderCache, loaded: LoadedModel, settings: Settings) -> IPAdapterRun:
        from guardforge.models.ipadapter_loading import load_adapter_state

        unet = getattr(loaded.pipeline, "unet", None)
        if unet is None:
            raise InvalidRequest(f"IP-Adapter runs on SD 1.x and SDXL checkpoints; {loaded.entry.name!r} has no UNet")
        check_unet_fit(self.shape, self.entry.name, unet.config.cross_attention_dim, loaded.entry.name)
        if _cross_attention_layers(unet) != self.shape.layers:
            raise InvalidRequest(f"IP-Adapter {self.entry.name!r} patches {self.shape.layers} cross-attention layers, "
                                 f"checkpoint {loaded.entry.name!r}'s UNet has {_cross_attention_layers(unet)}")
        encoder, processor = encoders.get(self.encoder, loaded.device, unet.dtype)
        return IPAdapterRun(self.unit.scale, self.image.convert("RGB"), load_adapter_state(self.entry, settings),
                            encoder, processor)

    def module(self) -> str:
        """sd-webui-controlnet's module name for this adapter and encoder: an SDXL adapter (cross-attention 2048)
        reads ViT-bigG (ip-adapter_clip_sdxl) or, for the _vit-h ones, ViT-H (ip-adapter_clip_sdxl_plus_vith); the
        rest is SD 1.x's ip-adapter_clip_sd15 (ViT-H)."""
        if self.shape.cross_attention_dim != 2048:
            return "ip-adapter_clip_sd15"
        from guardforge.models.ipadapter_loading import encoder_shape

        return "ip-adapter_clip_sdxl" if encoder_shape(self.encoder).projection_dim == 1280 else \
            "ip-adapter_clip_sdxl_plus_vith"

    def infotext(self) -> str:
        from guardforge.engine.infotext import _number

        values = {
            "Module": self.unit.module or self.module(), "Model": f"{self.entry.name} [{self.entry.short_hash()}]",
            "Weight": _number(self.unit.scale), "Resize Mode": "Crop and Resize", "Processor Res": 512,
            "Threshold A": -1, "Threshold B": -1, "Guidance Start": 0, "Guidance End": 1,
            "Pixel Perfect": False, "Control Mode": "Balanced",
        }
        return ", ".join(f"{key}: {value}" for key, value in values.items())


class IPAdapterRun:
    """What Engine.run needs: `applied(pipe)` loads the adapter into the pipeline for the run and yields the
    call's extra arguments."""

    def __init__(self, scale: float, image: Image.Image, state: dict, encoder, processor):
        self.scale = scale
        self.image = image
        self.state = state
        self.encoder = encoder
        self.processor = processor

    @contextmanager
    def applied(self, pipe: DiffusionPipeline) -> Iterator[dict[str, Any]]:
        """Call with the loaded model's lock held: the UNet is shared by every mode's pipeline of the model."""
        unet = pipe.unet
        # Put back exactly what was there (not diffusers' unload_ip_adapter, which installs fresh default
        # processors and drops the pipeline's feature extractor): whatever the pipeline ran with before, it runs
        # with after.
        processors = dict(unet.attn_processors)
        projection, hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
        encoder, extractor = getattr(pipe, "image_encoder", None), getattr(pipe, "feature_extractor", None)
        try:
            pipe.image_encoder, pipe.feature_extractor = self.encoder, self.processor
            # low_cpu_mem_usage=False: the meta-device path patches torch.nn.Module process-wide while it runs,
            # and other models may be loading in other threads (see PipelineCache._reading).
            pipe.load_ip_adapter(self.state, subfolder="", weight_name="", image_encoder_folder=None,
                                 low_cpu_mem_usage=False)
            pipe.set_ip_adapter_scale(self.scale)
            yield {"ip_adapter_image": self.image}
        finally:
            # The projection first: a Plus adapter's Resampler has attention layers of its own, and
            # set_attn_processor counts every attention layer under the UNet.
            unet.encoder_hid_proj = projection
            unet.config.encoder_hid_dim_type = hid_type
            unet.set_attn_processor(processors)
            pipe.image_encoder, pipe.feature_extractor = encoder, extractor


def ip_adapter_from_infotext(params: dict[str, Any]) -> dict[str, Any] | None:
    """The ip_adapter fields (without its image: a PNG does not hold it) of parsed infotext's ControlNet unit with
    an IP-Adapter module, if there is one."""
    for key in sorted((k for k in params if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1])):
        fields = dict(re.findall(r"(?:^|, )([A-Z][A-Za-z ]+): (.*?)(?=, [A-Z][A-Za-z ]+: |$)", str(params[key])))
        if is_ip_adapter_module(fields.get("Module")) and fields.get("Model"):
            return {"module": fields["Module"], "model": fields["Model"], "scale": float(fields.get("Weight", 1))}
    return None


def prepare_ip_adapter(registry, settings: Settings, unit: IPAdapterUnit, checkpoint: ModelEntry,
                       max_pixels: int) -> IPAdapterInputs:
    """The unit's image decoded and its adapter and encoder resolved and checked against each other and, from its
    configs, the checkpoint: everything a request can get wrong is refused here, before the guard or a model."""
    from guardforge.imaging import decode_image
    from guardforge.models.controlnet_loading import unet_shape
    from guardforge.models.ipadapter_loading import adapter_shape, pick_encoder

    image = decode_image(unit.image, max_pixels, "ip_adapter.image")
    entry = registry.resolve(unit.model, kind="ipadapter")
    shape = adapter_shape(entry, settings)
    unet = unet_shape(checkpoint)
    check_unet_fit(shape, entry.name, unet[0] if unet else None, checkpoint.name)
    encoder = pick_encoder(registry, settings, entry.name, shape, unit.encoder)
    return IPAdapterInputs(unit, image, entry, encoder, shape)
