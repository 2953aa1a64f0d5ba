"""The generation request and result: one schema for the CLI, the API, the UI and YAML configs."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from guardforge.engine.controlnet_unit import ControlNetUnit
from guardforge.engine.hires import HiresOptions, check_hires_size
from guardforge.engine.ip_adapter_unit import IPAdapterUnit
from guardforge.engine.masked_content import InpaintingFill
from guardforge.engine.outpaint import Outpaint
from guardforge.errors import InvalidRequest
from guardforge.guard.verdict import Verdict
from guardforge.settings import DType, Limits, Offload

ScheduleType = Literal["Automatic", "Karras", "Exponential"]
SCHEDULE_TYPES: tuple[str, ...] = get_args(ScheduleType)

# The largest seed torch.Generator.manual_seed takes. A1111 numbers a batch seed, seed+1, ... without wrapping
# and writes those seeds in infotext, so a batch started at 4294967295 has a second image of seed 4294967296:
# that seed must be accepted back. (Our CPU generator reads the seed's low 32 bits: same noise as seed 0.)
SEED_MAX = 2**64 - 1
# The names that mean a checkpoint's own VAE (A1111's sd_vae values; "" as a form left blank), lower case.
AUTOMATIC_VAE = ("automatic", "none", "")


class MemoryOptions(BaseModel):
    """Per-request overrides of MemorySettings; None keeps the setting in force."""

    model_config = ConfigDict(extra="forbid")

    dtype: DType | None = None
    offload: Offload | None = None
    attention_slicing: bool | None = None
    vae_slicing: bool | None = None
    vae_tiling: bool | None = None
    channels_last: bool | None = None


class RefinerOptions(BaseModel):
    """A second model that finishes the image (A1111's refiner_checkpoint, refiner_switch_at): the request's model
    runs the first `switch_at` of the steps, this checkpoint the rest (engine/refiner.py)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(..., min_length=1, max_length=1000)  # a registry name, file name or A1111 title
    switch_at: float = Field(0.8, gt=0.0, lt=1.0)


class GenerationRequest(BaseModel):
    """txt2img when init_image is None, img2img with init_image, inpaint with init_image and mask.

    Images are base64 (optionally a data: URL) so that the same model travels over HTTP and YAML;
    the CLI reads files and encodes them.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=20_000)
    negative_prompt: str = Field("", max_length=20_000)
    # A1111 styles (engine/styles.py), merged into the texts in this order; the texts may hold dynamic prompts
    # (`{a|b}`, `__wildcard__`: engine/dynamic_prompts.py), expanded per image with its seed.
    styles: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field([], max_length=32)
    model: str | None = None  # registry name; None means settings.default_model
    # A VAE from the models folder's VAE/ in place of the checkpoint's own; None: the checkpoint's own.
    vae: str | None = Field(None, max_length=1000)
    sampler: str = "Euler a"  # A1111 name, checked against engine.samplers.SAMPLERS
    schedule: ScheduleType = "Automatic"
    steps: int = Field(20, ge=1)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    seed: int = Field(-1, ge=-1, le=SEED_MAX)
    width: int | None = Field(None, ge=8)  # None: the model's native size
    height: int | None = Field(None, ge=8)
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    clip_skip: int = Field(1, ge=1, le=12)
    init_image: str | None = None
    mask: str | None = None
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_mask_invert: bool = False
    # A1111's variation seed (engine/variation.py): each image's noise slerped toward its subseed's by
    # subseed_strength; subseeds count up per image as seeds do, and -1 draws one. "Resize seed from" WxH
    # draws the seed's noise at that size, pasted centred (0 or -1: off).
    subseed: int = Field(-1, ge=-1, le=SEED_MAX)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(-1, ge=-1)
    seed_resize_from_h: int = Field(-1, ge=-1)
    # Outpainting (engine/outpaint.py): the init image's canvas extended by these pixels, the new area inpainted.
    outpaint: Outpaint | None = None
    # A1111's "Masked content" for inpaint and outpaint (engine/masked_content.py); None: "original" for inpaint,
    # "fill" for outpaint.
    inpainting_fill: InpaintingFill | None = None
    memory: MemoryOptions = MemoryOptions()
    # txt2img's hires fix (A1111's enable_hr): None, no second pass.
    hires: HiresOptions | None = None
    controlnet: list[ControlNetUnit] = []  # applied together (MultiControlNet), each with its own weight and span
    refiner: RefinerOptions | None = None
    ip_adapter: IPAdapterUnit | None = None  # an image prompt (engine/ip_adapter.py)
    # Scripts to run (guardforge/scripts/): name -> its args, named ({"text": "x"}) or A1111's positional list.
    # Checked against the installed scripts by the Studio, which owns them; always-on ones run unnamed too.
    scripts: dict[str, dict[str, Any] | list[Any]] = Field(default_factory=dict, max_length=16)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8, got {value} (try {value // 8 * 8 or 8})")
        return value

    @field_validator("init_image", "mask")
    @classmethod
    def _not_empty(cls, value: str | None, info) -> str | None:
        # "" would pass for "no image" in truthiness tests and read as an image in `mode`: refuse the ambiguity.
        if value is not None and not value.strip():
            raise ValueError(f"{info.field_name} is empty: send a base64 image (or a data: URL), or leave "
                             f"{info.field_name} out")
        return value

    @field_validator("vae")
    @classmethod
    def _checkpoint_vae_is_none(cls, value: str | None) -> str | None:
        # A1111 spells "the checkpoint's own" as "Automatic" or "None" (its sd_vae option); one spelling here,
        # so that the cache, the infotext and a reused request see no difference between them.
        if value is None or value.strip().lower() in AUTOMATIC_VAE:
            return None
        return value.strip()

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        from guardforge.engine.samplers import SAMPLERS, canonical_sampler_name

        name = canonical_sampler_name(value)
        if name is None:
            raise ValueError(f"unknown sampler {value!r}; choose one of: {', '.join(SAMPLERS)}")
        return name

    @model_validator(mode="after")
    def _mask_needs_image(self) -> GenerationRequest:
        if self.mask is not None and self.init_image is None:
            raise ValueError("a mask needs an init_image to inpaint")
        return self

    @model_validator(mode="after")
    def _outpaint_needs_image_alone(self) -> GenerationRequest:
        if self.outpaint is not None:
            if self.init_image is None:
                raise ValueError("outpaint needs an init_image to extend")
            if self.mask is not None or self.inpainting_mask_invert:
                raise ValueError("outpaint makes its own mask: leave mask and inpainting_mask_invert out")
        if self.inpainting_fill is not None and self.mask is None and self.outpaint is None:
            raise ValueError("inpainting_fill says what fills a masked area: give a mask or outpaint, or leave it out")
        return self

    @model_validator(mode="after")
    def _hires_is_txt2img(self) -> GenerationRequest:
        if self.hires is not None and self.init_image is not None:
            raise ValueError("hires fix is for txt2img: leave hires out with an init_image")
        if self.hires is not None and self.refiner is not None:
            # The refiner's hand-over and hires fix's second pass each replace the pipeline call; chaining them
            # (A1111 refines both passes) is not built yet: refused rather than half done.
            raise ValueError("hires fix and a refiner together are not supported yet: use one or the other")
        return self

    @model_validator(mode="after")
    def _ip_adapter_without_hires(self) -> GenerationRequest:
        # The hires pass runs another pipeline call that would need the adapter's image embeddings too.
        if self.ip_adapter is not None and self.hires is not None:
            raise ValueError("IP-Adapter and hires fix do not run together yet: leave one out")
        return self

    @model_validator(mode="after")
    def _control_images_exist(self) -> GenerationRequest:
        for index, unit in enumerate(self.controlnet):
            if unit.image is None and self.init_image is None:
                raise ValueError(f"controlnet unit {index} has no image, and there is no init_image to use instead")
        if self.controlnet and self.outpaint is not None:
            # The units' images are fitted to the request's size, not to the outpainted canvas, so they would
            # steer the wrong pixels: refused until they are laid out on the canvas.
            raise ValueError("controlnet units with outpaint are not supported yet: outpaint first, then use the "
                             "result as the init image")
        return self

    @model_validator(mode="after")
    def _batch_seeds_fit(self) -> GenerationRequest:
        last = self.seed + self.batch_size * self.n_iter - 1
        if self.seed != -1 and last > SEED_MAX:
            raise ValueError(f"seeds {self.seed}..{last} (one per image) run past the largest seed, {SEED_MAX}; "
                             "start lower")
        last = self.subseed + self.batch_size * self.n_iter - 1
        if self.subseed != -1 and last > SEED_MAX:
            raise ValueError(f"subseeds {self.subseed}..{last} (one per image) run past the largest seed, "
                             f"{SEED_MAX}; start lower")
        return self

    @model_validator(mode="after")
    def _seed_resize_is_a_size(self) -> GenerationRequest:
        w, h = self.seed_resize_from_w, self.seed_resize_from_h
        if (w > 0) != (h > 0):
            raise ValueError(f"seed_resize_from needs both a width and a height (got {w}x{h}); 0 or -1 in both: off")
        if w > 0 and (w % 8 or h % 8):
            raise ValueError(f"seed_resize_from {w}x{h}: both must be multiples of 8")
        return self

    @property
    def mode(self) -> Literal["txt2img", "img2img", "inpaint"]:
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None or self.outpaint is not None else "img2img"

    def check_limits(self, limits: Limits) -> None:
        """Raise InvalidRequest naming the first cap this request breaks."""
        checks = [
            ("steps", self.steps, limits.max_steps),
            ("width", self.width or 0, limits.max_width),
            ("height", self.height or 0, limits.max_height),
            ("seed_resize_from_w", self.seed_resize_from_w, limits.max_width),
            ("seed_resize_from_h", self.seed_resize_from_h, limits.max_height),
            ("batch_size", self.batch_size, limits.max_batch_size),
            ("n_iter", self.n_iter, limits.max_n_iter),
            ("controlnet units", len(self.controlnet), limits.max_controlnet_units),
        ]
        if self.outpaint is not None:  # without a size, the image's own counts, once known (outpaint.check_canvas)
            spec = self.outpaint
            checks += [("outpainted width", self.width + spec.left + spec.right if self.width else 0,
                        limits.max_width),
                       ("outpainted height", self.height + spec.up + spec.down if self.height else 0,
                        limits.max_height)]
        if self.hires is not None:
            checks.append(("hires.steps", self.hires.steps, limits.max_steps))
        for name, value, cap in checks:
            if value > cap:
                raise InvalidRequest(f"{name}={value} is over this server's limit of {cap}")
        if self.hires is not None and self.width and self.height:  # else the engine checks, at the native size
            check_hires_size(self.width, self.height, self.hires, limits)


class ProgressEvent(BaseModel):
    """One denoising step done; sent to the CLI progress bar, SSE streams and the UI."""

    step: int
    total: int  # steps of the whole request (all n_iter batches)
    it_per_s: float
    eta_s: float
    batch_index: int = 0
    # A PIL image of the latents at this step, screened by the guard (engine/preview.py); never serialised.
    preview: Any = Field(None, exclude=True)


class GeneratedImage(BaseModel):
    """One image of a result. `path` is None when the guard withheld the pixels or saving was off."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image_id: str
    seed: int
    subseed: int | None = None  # A1111's variation seed, when subseed_strength used it
    infotext: str
    width: int
    height: int
    path: str | None = None
    verdict: Verdict | None = None  # None when the guard was off
    action: Literal["allow", "flag", "blur", "block"] = "allow"
    # The PIL image as delivered (blurred if the policy said so; None when blocked). Not serialised.
    pil: Any = Field(default=None, exclude=True, repr=False)


class GenerationResult(BaseModel):
    request: GenerationRequest
    images: list[GeneratedImage]
    seeds: list[int]
    subseeds: list[int] = []  # one per image, as A1111's all_subseeds (drawn even when the strength is 0)
    model: str
    model_hash: str | None
    # The VAE used in place of the checkpoint's own, by its file name as A1111 names VAEs; None: the own.
    vae: str | None = None
    vae_hash: str | None = None
    elapsed_s: float
    prompt_verdict: Verdict | None = None
    blocked: bool = False  # the prompt or input image was blocked: the engine never ran
    device: str | None = None  # where the engine ran (None when it never ran)
