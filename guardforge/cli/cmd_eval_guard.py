"""`guardforge eval guard --dataset openai-mod|xstest|ailuminate|i2p|parti|coco|counterfactual [--split test|train]
[--limit N] [--backend embedded] [--out DIR]`."""

from __future__ import annotations

from pathlib import Path

import typer

from guardforge.cli import eval_app


def _as_generate_reads(prompt: str) -> list[str]:
    """Every text the guard scores for `prompt` in a generation (Studio's prompt_reading: as typed, as the engine
    encodes it, its windows); a prompt generate would refuse is read as typed and in windows, as guard check
    reads it."""
    from guardforge.errors import InvalidRequest
    from guardforge.guard.windows import text_windows
    from guardforge.studio import prompt_reading

    try:
        reading = prompt_reading(prompt)
    except InvalidRequest:
        return [prompt, *text_windows(prompt)]
    return [reading.text, *reading.views, *reading.implied]


@eval_app.command("guard")
def eval_guard(
    dataset: str = typer.Option(..., "--dataset",
                                help="openai-mod, xstest, ailuminate (safety sets); i2p, parti, coco (image-prompt "
                                     "sets); counterfactual (demographic swaps on benign image prompts)"),
    split: str = typer.Option("test", "--split", help="test or train, for the sets that have the sha1 split"),
    limit: int | None = typer.Option(None, "--limit", min=1,
                                     help="score only N rows spread evenly over the split (counterfactual: the "
                                          "first N templates); default all"),
    backend: str = typer.Option("embedded", "--backend", help="a text guard backend name"),
    out: Path | None = typer.Option(None, "--out",
                                    help="write the precision-recall curve PNG and the false positives (TSV) here"),
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
    """Measure a text guard on a safety or image-prompt set: AUPRC, AUROC, F1, recall, FPR, per-category recall,
    what the policy does and its false positives, latency and throughput."""
    from guardforge.guard import counterfactual, evaluation
    from guardforge.guard.policy import load_policy
    from guardforge.guard.registry import as_prompt_reader, build_backend
    from guardforge.guard.t2i_data import T2I_DATASETS
    from guardforge.settings import Settings

    known = (*evaluation.DATASETS, "counterfactual")
    if dataset not in known:
        raise typer.BadParameter(f"choose one of {', '.join(known)}", param_hint="--dataset")
    if split not in ("test", "train"):
        raise typer.BadParameter("choose test or train", param_hint="--split")
    if split != "test" and dataset in (*evaluation.UNSPLIT, "counterfactual"):
        raise typer.BadParameter(f"{dataset} has no train split: it is read whole", param_hint="--split")
    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = Settings()
    # Built for the policy's taxonomy, as the guard builds it, so the policy figures are the product's decisions.
    policy_in_force = load_policy(policy or settings.guard.policy)
    # Read as the guard reads prompts (guard/demographics.py), so the figures are the product's.
    text_backend = as_prompt_reader(build_backend(backend, "text", settings, policy_in_force.taxonomy), settings)
    if dataset == "counterfactual":
        # Every description of every attribute in every template: the test in the suite samples two per attribute.
        report = counterfactual.measure(text_backend, policy_in_force, per_attribute=None, limit=limit)
        if out is not None:
            report.write_swaps(out / "counterfactual-swaps.tsv")
    else:
        # Image prompts are read as a generation reads them. The safety sets are chat and requests, not prompts,
        # and are read as typed, as their published figures were measured.
        report = evaluation.evaluate_text_backend(text_backend, dataset, out_dir=out, threshold=threshold,
                                                  latency_sample=latency_sample, policy=policy_in_force,
                                                  split=split, limit=limit,
                                                  read_prompt=_as_generate_reads if dataset in T2I_DATASETS else None)
    for line in report.lines():
        typer.echo(line)
    if image_latency:
        image_backend = build_backend(backend, "image", settings, policy_in_force.taxonomy)
        figures = evaluation.image_latency(image_backend)
        typer.echo("image backend, 512x512: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
