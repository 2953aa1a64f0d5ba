"""Per-owner UI settings (the last form each API key used), in the studio's database so they follow the key to
any browser and never to another key."""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Float, MetaData, String, Table, Text, select

from guardforge.db import Database


class RememberedSettings(BaseModel):
    """The form's generation settings a user gets back on their next visit; never the prompt (a setting is how,
    the prompt is what) and never an image. Read back leniently: a field this version no longer has is dropped."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    vae: str | None = None
    sampler: str | None = None
    schedule: str | None = None
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = None
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    negative_prompt: str | None = Field(None, max_length=4000)


def preference_table(metadata: MetaData) -> Table:
    return Table(
        "gf_ui_settings", metadata,
        Column("owner", String(64), primary_key=True),
        Column("data", Text, nullable=False),  # RememberedSettings as JSON
        Column("updated_at", Float, nullable=False),
    )


class PreferenceStore:
    def __init__(self, database: Database):
        self.database = database
        self.table = database.define(preference_table)

    def save(self, owner: str, settings: RememberedSettings) -> None:
        self.database.create(self.table)
        data = settings.model_dump_json(exclude_none=True)
        with self.database.engine.begin() as conn:
            # Delete then insert: one statement shape for SQLite and PostgreSQL alike.
            conn.execute(self.table.delete().where(self.table.c.owner == owner))
            conn.execute(self.table.insert().values(owner=owner, data=data, updated_at=time.time()))

    def load(self, owner: str) -> RememberedSettings | None:
        self.database.create(self.table)
        with self.database.engine.connect() as conn:
            row = conn.execute(select(self.table.c.data).where(self.table.c.owner == owner)).first()
        if row is None:
            return None
        try:
            return RememberedSettings.model_validate(json.loads(row.data))
        except ValueError:  # written by a version with other limits: start from the defaults again
            return None
