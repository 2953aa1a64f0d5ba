"""`guardforge eval adherence`: how often tiny-shapes draws what its prompt asks, read back by the detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardforge.cli import eval_app


@eval_app.command("adherence")
def eval_adherence_command(
    model: Annotated[Path, typer.Option(help="A tiny-shapes diffusers folder.")] = Path(
        __file__).resolve().parent.parent / "assets" / "models" / "tiny-shapes",
    steps: Annotated[int, typer.Option(min=1)] = 20,
    cfg: Annotated[float, typer.Option(min=0.0)] = 7.5,
    guidance_rescale: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="diffusers' CFG rescale (Lin et al.), 0 = off; counters over-saturation.")] = 0.0,
    sampler: Annotated[str, typer.Option(help="A1111 sampler name, e.g. Euler, 'Euler a', 'DPM++ 2M'.")] = "Euler",
    n: Annotated[int, typer.Option(min=1, help="Prompts per split (held-out and seen).")] = 40,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    two_objects: Annotated[int, typer.Option(
        min=0, help="Also score this many two-object captions of seen pairs (which colour and shape go where).")
    ] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the grid PNGs (prompt and detector reading under each "
                                            "sample, misses in red).")] = Path("outputs/adherence"),
) -> None:
    """Generate from held-out and seen single-object captions, read them with the detector, print accuracy.

    Under each split, "VAE only" reads the same captions' true images after a VAE round trip, the reference for
    a UNet that gets the latents exactly right. "latent err": generated against true latents, MSE / variance.
    With --two-objects N, also N captions of two objects (seen pairs): colour, shape and position per object,
    and "both", the images with both objects right; its "VAE only" row reads their true images likewise.
    """
    import torch

    from guardforge.train.shapes.adherence import (
        ATTRIBUTES,
        PAIR_ATTRIBUTES,
        evaluate,
        evaluate_pairs,
        load_pipeline,
        save_grid,
        vae_round_trip,
        vae_round_trip_pairs,
    )

    torch.set_num_threads(threads)
    pipe = load_pipeline(model, sampler)
    typer.echo(f"model {model}  sampler {sampler}  steps {steps}  cfg {cfg}  rescale {guidance_rescale}  "
               f"n {n} per split")
    typer.echo(f"{'split':<14}" + "".join(f"{a:>12}" for a in (*ATTRIBUTES, "all")) + f"{'s/image':>10}"
               + f"{'latent err':>12}")
    for held_out in (True, False):
        report = evaluate(pipe, held_out, n, steps=steps, cfg=cfg, seed=seed, guidance_rescale=guidance_rescale)
        per_image = report.seconds / n
        acc = report.accuracy()
        typer.echo(f"{report.split:<14}" + "".join(f"{acc[a]:>12.1%}" for a in (*ATTRIBUTES, "all"))
                   + f"{per_image:>10.3f}{report.latent_error:>12.3f}")
        # The reference: the same captions' true images through the VAE alone (no UNet, no sampler).
        reference = vae_round_trip(pipe, held_out, n).accuracy()
        typer.echo(f"{'  VAE only':<14}" + "".join(f"{reference[a]:>12.1%}" for a in (*ATTRIBUTES, "all")))
        tag = f"{report.split}_{sampler.replace(' ', '_').replace('+', 'p')}_cfg{cfg:g}_steps{steps}" + (
            f"_rescale{guidance_rescale:g}" if guidance_rescale else "")
        grid = save_grid(report.samples[:48], out / f"{tag}.png")  # every sample of a default run, to audit
        typer.echo(f"  grid: {grid}")
    if two_objects:
        pairs = evaluate_pairs(pipe, two_objects, steps=steps, cfg=cfg, seed=seed, guidance_rescale=guidance_rescale)
        acc = pairs.accuracy()
        typer.echo(f"{'':<14}" + "".join(f"{a:>12}" for a in PAIR_ATTRIBUTES) + f"{'s/image':>10}")
        typer.echo(f"{'two objects':<14}" + "".join(f"{acc[a]:>12.1%}" for a in PAIR_ATTRIBUTES)
                   + f"{pairs.seconds / two_objects:>10.3f}")
        reference = vae_round_trip_pairs(pipe, two_objects).accuracy()
        typer.echo(f"{'  VAE only':<14}" + "".join(f"{reference[a]:>12.1%}" for a in PAIR_ATTRIBUTES))
        grid = save_grid(pairs.samples[:48], out / f"two-objects{tag.removeprefix('seen')}.png")
        typer.echo(f"  grid: {grid}")
