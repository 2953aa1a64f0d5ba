"""The web UI's generation endpoints take their inputs by position. After the prompt, negative, nine parameters,
init image, strength and inpaint editor come each tab's own controls; these are those controls, switched off."""

from guardforge.ui.controlnet_panel import units_off

# Extra (the variation seed row), variation seed, its strength, resize seed from width and height.
SEED_EXTRAS_OFF = (False, -1, 0, 0, 0)
# Hires fix: enabled, upscaler, scale, steps, strength, resize x and y, sampler, prompt, negative prompt.
HIRES_OFF = (False, "Latent", 2, 0, 0.7, 0, 0, "Use same sampler", "", "")
# Outpaint: left, right, up, down, masked content.
OUTPAINT_OFF = (0, 0, 0, 0, "fill")
# The refiner picker and its switch slider.
REFINER_OFF = ("None", 0.8)
# Batch count and batch size: one image.
BATCH_OFF = (1, 1)


def txt2img_off(seed_extras: tuple = SEED_EXTRAS_OFF, hires: tuple = HIRES_OFF, batch: tuple = BATCH_OFF) -> tuple:
    """/run_mode's inputs after the editor: the seed extras, hires fix, the refiner, batch count and size, the tab's
    ControlNet units."""
    return (*seed_extras, *hires, *REFINER_OFF, *batch, *units_off())


def img2img_off(seed_extras: tuple = SEED_EXTRAS_OFF, outpaint: tuple = OUTPAINT_OFF,
                batch: tuple = BATCH_OFF) -> tuple:
    """/run_mode_1's inputs after the editor: the seed extras, outpaint, the refiner, batch count and size, the
    tab's ControlNet units."""
    return (*seed_extras, *outpaint, *REFINER_OFF, *batch, *units_off())


# /run_mode_2's (inpaint) inputs after the editor: the seed extras, the masked content (its default), then batch
# count and size.
INPAINT_OFF = (*SEED_EXTRAS_OFF, 0, 0, 0, 0, "original", *BATCH_OFF)
