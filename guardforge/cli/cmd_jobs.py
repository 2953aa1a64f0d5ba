"""`guardforge jobs prune`: delete the pixels of old jobs from the server's database."""

from __future__ import annotations

import typer

from guardforge.cli import jobs_app


@jobs_app.command("prune")
def prune(older_than: float | None = typer.Option(
        None, "--older-than", min=0, metavar="HOURS",
        help="Jobs that ended more than this many hours ago (default: jobs.retention_hours; 0: every ended job)")) -> None:
    """Delete the image data of ended jobs (images kept in the database, init images, masks); the jobs and their
    infotexts stay, and files saved to the outputs folder are not touched. Queued and running jobs are never
    touched, so this is safe while the server runs."""
    from guardforge.studio import Studio

    purged = Studio().prune_jobs(older_than)
    typer.echo(f"purged the image data of {purged} job{'s' if purged != 1 else ''}")
