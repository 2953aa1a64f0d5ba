"""`guardforge eval guard --dataset openai-mod|xstest|ailuminate [--backend embedded] [--out DIR]`."""

from __future__ import annotations

from pathlib import Path

import typer

from guardforge.cli import eval_app


@eval_app.command("guard")
def eval_guard(
    dataset: str = typer.Option(..., "--dataset", help="openai-mod (test split), xstest, or ailuminate"),
    backend: str = typer.Option("embedded", "--backend", help="a text guard backend name"),
    out: Path | None = typer.Option(None, "--out", help="write the precision-recall curve PNG here"),
    threshold: float | None = typer.Option(None, "--threshold",
                                           help="default: the backend's shipped overall-unsafe threshold"),
    latency_sample: int = typer.Option(100, "--latency-sample", min=1,
                                       help="prompts timed one at a time for the latency figures"),
    image_latency: bool = typer.Option(False, "--image-latency",
                                       help="also time the image backend on 512x512 images"),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch intra-op threads (default: torch's own choice)"),
    policy: str | None = typer.Option(None, "--policy",
                                      help="also report what this policy does (default: settings guard.policy)"),
) -> None:
    """Measure a text guard on a safety test set: AUPRC, F1, recall, FPR, per-category recall, latency."""
    from guardforge.guard import evaluation
    from guardforge.guard.policy import load_policy
    from guardforge.guard.registry import build_backend
    from guardforge.settings import Settings

    if dataset not in evaluation.DATASETS:
        raise typer.BadParameter(f"choose one of {', '.join(evaluation.DATASETS)}", param_hint="--dataset")
    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = Settings()
    # Built for the policy's taxonomy, as the guard builds it, so the policy figures are the product's decisions.
    policy_in_force = load_policy(policy or settings.guard.policy)
    text_backend = build_backend(backend, "text", settings, policy_in_force.taxonomy)
    report = evaluation.evaluate_text_backend(text_backend, dataset, out_dir=out, threshold=threshold,
                                              latency_sample=latency_sample, policy=policy_in_force)
    for line in report.lines():
        typer.echo(line)
    if image_latency:
        image_backend = build_backend(backend, "image", settings, policy_in_force.taxonomy)
        figures = evaluation.image_latency(image_backend)
        typer.echo("image backend, 512x512: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
