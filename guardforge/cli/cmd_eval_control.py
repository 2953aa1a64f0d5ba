"""`guardforge eval control`: does a ControlNet place tiny-shapes' object where its control image says?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardforge.cli import eval_app


@eval_app.command("control")
def eval_control_command(
    controlnet: Annotated[str, typer.Option(help="ControlNet registry name.")] = "tiny-shapes-canny",
    model: Annotated[str, typer.Option(help="Checkpoint registry name (a tiny-shapes model).")] = "tiny-shapes",
    module: Annotated[str, typer.Option(help="The unit's preprocessor, as sd-webui-controlnet names it.")] = "canny",
    processor_res: Annotated[int, typer.Option(
        min=64, help="The preprocessor's resolution (A1111's default is 512; tiny-shapes draws 64x64).")] = 64,
    steps: Annotated[int, typer.Option(min=1)] = 20,
    cfg: Annotated[float, typer.Option(min=0.0)] = 7.5,
    sampler: Annotated[str, typer.Option(help="A1111 sampler name.")] = "Euler",
    n: Annotated[int, typer.Option(min=1, help="Prompts (each run with and without the control image).")] = 40,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    out: Annotated[Path, typer.Option(help="Folder for the grid PNG (control | with | without, the detector's "
                                            "reading under each, misses of the place in red).")] = Path(
        "outputs/control"),
) -> None:
    """Prompts name a colour and a shape but no place; a control image (the scene with the object at a random
    place) says where. Each prompt is generated through Studio.generate with a ControlNet unit and without,
    read back by the detector: the rate at which the object lands at the control's place (95% Wilson
    interval), and shape, colour, size and background. Without control the place is hit by chance."""
    import torch

    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from guardforge.train.shapes import control, data

    torch.set_num_threads(threads)
    studio = Studio(Settings())
    generate = control.studio_generator(studio, controlnet, model=model, steps=steps, cfg=cfg, sampler=sampler,
                                        module=module, processor_res=processor_res)
    with_control, without = control.evaluate(generate, n, seed=seed, warm_up=True)
    typer.echo(f"model {model}  controlnet {controlnet}  module {module} @ {processor_res}  sampler {sampler}  "
               f"steps {steps}  cfg {cfg}  n {n}  seed {seed}")
    # s/image: one Studio.generate each (prompt guard, engine, output guard), models already loaded.
    typer.echo(f"{'':<16}" + "".join(f"{a:>20}" for a in control.CONTROL_ATTRIBUTES) + f"{'s/image':>10}")
    for report in (with_control, without):
        cells = [f"{report.rate(a):.1%} [{report.interval(a)[0]:.0%}-{report.interval(a)[1]:.0%}]"
                 for a in control.CONTROL_ATTRIBUTES]
        typer.echo(f"{report.label:<16}" + "".join(f"{c:>20}" for c in cells) + f"{report.seconds / n:>10.3f}")
    cases = control.control_cases(n)
    tag = f"control_{controlnet}_{module}{processor_res}_{sampler.replace(' ', '_').replace('+', 'p')}_cfg{cfg:g}"
    maps = [control.control_map(data.render(case.scene), module, processor_res) for case in cases[:16]]
    grid = control.save_control_grid(cases, maps, with_control, without, out / f"{tag}_steps{steps}.png")
    typer.echo(f"grid: {grid}")
