"""`guardforge models merge A B [C]`: A1111's checkpoint merger (weighted sum, add difference, block weights)."""

from __future__ import annotations

import typer

from guardforge.cli import models_app


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        from guardforge.errors import InvalidRequest

        raise InvalidRequest(f"--block-weights {text!r}: give comma-separated numbers, IN00,..,M00,..,OUT.."
                             ) from None


@models_app.command("merge")
def merge(primary: str = typer.Argument(..., help="Model A (its configs and keys are the result's)"),
          secondary: str = typer.Argument(..., help="Model B"),
          tertiary: str = typer.Argument(None, help="Model C, for --mode add_difference: A + (B - C) * alpha"),
          mode: str = typer.Option("weighted_sum", "--mode", help="weighted_sum (A*(1-alpha) + B*alpha) or "
                                   "add_difference"),
          alpha: float = typer.Option(0.5, "--alpha", help="A1111's multiplier; the base alpha with --block-weights"),
          block_weights: str = typer.Option(None, "--block-weights", help="One alpha per UNet block, IN00..,M00,"
                                            "OUT.. (25 for SD 1.x, 19 for SDXL), comma-separated"),
          name: str = typer.Option(None, "--name", help="Output name in Stable-diffusion/ (default A1111's)"),
          fp16: bool = typer.Option(False, "--fp16", help="Save float32 tensors as float16"),
          bake_in_vae: str = typer.Option(None, "--bake-in-vae", help="A VAE from models/VAE/ to replace the "
                                          "result's own (a file for single files, a folder for folders)"),
          discard: str = typer.Option("", "--discard-weights", help="Leave out tensors whose names match "
                                      "this regular expression"),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model of that name"),
          ) -> None:
    """Merge checkpoints of one family into a new one, hashed and listed at once."""
    from guardforge.models.merge import MergeRequest
    from guardforge.studio import Studio

    request = MergeRequest(primary=primary, secondary=secondary, tertiary=tertiary, mode=mode, alpha=alpha,
                           block_weights=_floats(block_weights), name=name, fp16=fp16, bake_in_vae=bake_in_vae,
                           discard_weights=discard,
                           overwrite=overwrite)
    result = Studio().merge_models(request)
    typer.echo(f"{result.name}  [{result.short_hash}]  {result.family}  {result.format}  merged={result.merged} "
               f"copied={result.copied} dropped={result.dropped}  {result.elapsed_s:.1f}s  {result.file}")
