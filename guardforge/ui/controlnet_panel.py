"""The web UI's ControlNet units, laid out as sd-webui-controlnet lays them out (an accordion of "ControlNet Unit N"
tabs: image and preview, Enable and Pixel Perfect, Preprocessor and Model, weight, start and end steps, control
mode, resize mode, the preprocessor's resolution and thresholds); one panel per generation tab."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from guardforge.a1111.ip_adapter import IP_ADAPTER_MODULES
from guardforge.engine.controlnet_unit import CONTROL_MODES, RESIZE_MODES
from guardforge.engine.ip_adapter import is_ip_adapter_module
from guardforge.errors import GuardforgeError
from guardforge.imaging import encode_image
from guardforge.ui.uploads import UploadedImage, with_cap

UNITS = 2  # sd-webui-controlnet shows three by default; two cover the common pairs (canny + depth, tile + lineart)
# One unit's values, in the order its components are passed to a handler.
FIELDS = ("enabled", "image", "module", "model", "weight", "guidance_start", "guidance_end", "processor_res",
          "threshold_a", "threshold_b", "control_mode", "resize_mode", "pixel_perfect")


def units_off() -> list:
    """The values of a tab's unit inputs with every unit off, in input order: what an API client of the UI's
    generation endpoints (/run_mode, /run_mode_1) sends after the form's own inputs when it wants no ControlNet."""
    return [False, None, "none", None, 1.0, 0.0, 1.0, 512, 100, 200, "Balanced", "Crop and Resize", False] * UNITS


@dataclass
class ControlNetPanel:
    """The components of one tab's units, and the handler wrapper that turns their values into request units."""

    studio: object
    rate_limit: Callable[[str], None] | None
    owner: Callable[[gr.Request | None], str]
    img2img: bool
    components: list = field(default_factory=list)  # UNITS x FIELDS, flat

    def build(self, tab: str) -> ControlNetPanel:
        modules = [m for m in self.studio.controlnet_modules() if m.available]
        with gr.Accordion("ControlNet", open=False, elem_id=f"gf-{tab}-controlnet"):
            with gr.Tabs():
                for index in range(UNITS):
                    with gr.Tab(f"ControlNet Unit {index}"):
                        self._unit(tab, index, modules)
        return self

    def _unit(self, tab: str, index: int, modules: list) -> None:
        prefix = f"gf-{tab}-cn{index}"
        limits = self.studio.settings.limits
        hint = " (empty: the img2img image)" if self.img2img else ""
        with gr.Row():
            image = with_cap(UploadedImage(type="pil", label=f"Control image{hint}", elem_id=f"{prefix}-image"),
                             limits.max_image_pixels)
            preview = gr.Image(type="pil", label="Preprocessor preview", interactive=False,
                               elem_id=f"{prefix}-preview")
        with gr.Row():
            enabled = gr.Checkbox(False, label="Enable", elem_id=f"{prefix}-enable")
            pixel_perfect = gr.Checkbox(False, label="Pixel Perfect")
            preview_button = gr.Button("Preview preprocessor result", size="sm", elem_id=f"{prefix}-run-preview")
        with gr.Row():
            # sd-webui-controlnet offers IP-Adapter as a unit: its modules and models are in the same pickers.
            module = gr.Dropdown([m.name for m in modules] + list(IP_ADAPTER_MODULES), value="none",
                                 label="Preprocessor",
                                 elem_id=f"{prefix}-module")
            model = gr.Dropdown(self._models(), value=None, label="Model", elem_id=f"{prefix}-model")
            refresh = gr.Button("Refresh models", size="sm")
        with gr.Row():
            weight = gr.Slider(0, 2, value=1, step=0.05, label="Control Weight", elem_id=f"{prefix}-weight")
            start = gr.Slider(0, 1, value=0, step=0.01, label="Starting Control Step")
            end = gr.Slider(0, 1, value=1, step=0.01, label="Ending Control Step")
        with gr.Row():
            resolution = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution", visible=False)
            threshold_a = gr.Slider(0, 255, value=100, label="Threshold A", visible=False)
            threshold_b = gr.Slider(0, 255, value=200, label="Threshold B", visible=False)
        control_mode = gr.Radio(list(CONTROL_MODES), value="Balanced", label="Control Mode")
        resize_mode = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode")
        unit = [enabled, image, module, model, weight, start, end, resolution, threshold_a, threshold_b,
                control_mode, resize_mode, pixel_perfect]
        self.components += unit
        module.change(self._sliders, [module], [resolution, threshold_a, threshold_b])
        refresh.click(lambda: gr.update(choices=self._models()), None, [model])
        # Uploading an image enables its unit, as sd-webui-controlnet does.
        image.upload(lambda _: gr.update(value=True), [image], [enabled])

        def run_preview(*args):
            *values, request = args  # Gradio passes the request last: the signature below names it so
            return self._preview(dict(zip(FIELDS, values, strict=True)), request)

        run_preview.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in FIELDS]
            + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
        run_preview.__annotations__ = {"request": gr.Request}
        preview_button.click(run_preview, unit, [preview], concurrency_limit=None)

    def _models(self) -> list[str]:
        return [entry.name for kind in ("controlnet", "ipadapter") for entry in self.studio.models(kind)]

    def _sliders(self, name: str):
        """Show the resolution and threshold sliders the module has, with its labels, ranges and defaults."""
        found = next((m for m in self.studio.controlnet_modules() if m.name == name), None)
        sliders = list(found.sliders) if found else []
        shown = [s for s in sliders if s.name != "Resolution"]
        updates = [gr.update(visible=bool(found and found.uses_resolution))]
        for which in range(2):
            if which < len(shown):
                s = shown[which]
                updates.append(gr.update(visible=True, label=s.name, minimum=s.min, maximum=s.max, value=s.value,
                                         step=s.step or (s.max - s.min) / 100))
            else:
                updates.append(gr.update(visible=False))
        return updates

    def _preview(self, values: dict, request: gr.Request | None):
        if values["image"] is None:
            raise gr.Error("drop a control image into the unit first")
        if is_ip_adapter_module(values["module"]):
            raise gr.Error("an IP-Adapter unit has no preprocessor map to preview: its image goes to the adapter as is")
        if self.rate_limit is not None:
            try:
                self.rate_limit(self.owner(request))
            except GuardforgeError as exc:
                raise gr.Error(f"Too many requests: {exc}") from None
        unit = _unit_fields(values)
        try:
            [result] = self.studio.detect_control(
                [unit["image"]], unit["module"], unit.get("processor_res", 512), unit.get("threshold_a"),
                unit.get("threshold_b"))
        except GuardforgeError as exc:
            raise gr.Error(str(exc)) from None
        if result.image is None:
            raise gr.Error(f"the guard withheld this image ({', '.join(result.verdict.violated) or 'policy'})")
        return result.image

    def units(self, values: list) -> list[dict]:
        """The request's `controlnet` units: the enabled ones, in order."""
        units = []
        for index in range(UNITS):
            unit = dict(zip(FIELDS, values[index * len(FIELDS):(index + 1) * len(FIELDS)], strict=True))
            if not unit["enabled"]:
                continue
            if not unit["model"]:
                raise gr.Error(f"ControlNet Unit {index} is enabled but has no model: choose one (or Refresh models)")
            if is_ip_adapter_module(unit["module"]):
                if unit["image"] is None:
                    raise gr.Error(f"ControlNet Unit {index} is an IP-Adapter unit: drop the picture it draws from")
                units.append({"module": unit["module"], "model": unit["model"], "scale": float(unit["weight"]),
                              "image": encode_image(unit["image"].convert("RGB"))})
                continue
            units.append(_unit_fields(unit))
        return units

    @staticmethod
    def request_fields(units: list[dict]) -> dict:
        """The request fields of units() as a handler gets them: ControlNet units, and an IP-Adapter unit as the
        request's ip_adapter (one per request)."""
        adapters = [unit for unit in units if is_ip_adapter_module(unit["module"])]
        if len(adapters) > 1:
            raise gr.Error("one IP-Adapter unit per request: disable the other")
        fields: dict = {"controlnet": [unit for unit in units if not is_ip_adapter_module(unit["module"])]}
        if adapters:
            fields["ip_adapter"] = adapters[0]
        return fields

    def wrap(self, handler: Callable, names: list[str]) -> Callable:
        """`handler(*base values, request, controlnet=units)` as a Gradio handler of the base inputs and this panel's
        components. Gradio fills a gr.Request by the parameter's annotation, so the handler gets a signature that
        names every input."""
        count = len(self.components)

        def handle(*args):
            *values, request = args
            yield from handler(*values[:-count], request, controlnet=self.units(values[-count:]))

        handle.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for name in [*names, *(f"cn{i}" for i in range(count)), "request"]])
        handle.__annotations__ = {"request": gr.Request}
        # Gradio names the API endpoint after the function: the generation handlers keep the names API clients
        # already call (/run_mode for txt2img, /run_mode_1 for img2img); the unit inputs come after, with defaults.
        handle.__name__ = "run_mode"
        return handle


def _unit_fields(values: dict) -> dict:
    """A panel unit's values as ControlNetUnit fields: the sliders the module does not have are left out."""
    from guardforge.engine.controlnet_preprocessors import PREPROCESSORS

    found = PREPROCESSORS.get(values["module"])
    shown = [s for s in (found.sliders if found else ()) if s.name != "Resolution"]
    unit = {"module": values["module"], "model": values["model"], "weight": float(values["weight"]),
            "guidance_start": float(values["guidance_start"]), "guidance_end": float(values["guidance_end"]),
            "control_mode": values["control_mode"], "resize_mode": values["resize_mode"],
            "pixel_perfect": bool(values["pixel_perfect"])}
    if values["image"] is not None:
        unit["image"] = encode_image(values["image"].convert("RGBA") if values["image"].mode == "RGBA"
                                     else values["image"].convert("RGB"))
    if found is not None and found.uses_resolution:
        unit["processor_res"] = int(values["processor_res"])
    for which, name in enumerate(("threshold_a", "threshold_b")):
        if which < len(shown):
            unit[name] = float(values[name])
    return unit
