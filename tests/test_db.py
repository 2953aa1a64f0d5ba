"""The one Database: built once by the Studio, opened on first use, shared by the queue, the keys and the audit log."""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import MetaData

import guardforge.access
import guardforge.jobs
import guardforge.storage
from guardforge.access.keys import KeyStore
from guardforge.db import Database
from guardforge.guard.audit import AuditLog
from guardforge.jobs.queue import JobQueue


def test_studio_hands_one_database_to_the_queue_the_keys_and_the_audit_log(tmp_path):
    from guardforge.settings import Settings
    from guardforge.studio import Studio

    studio = Studio(Settings(home=tmp_path / "home", guard={"policy": "off"}))  # audited, nothing to load
    assert not (tmp_path / "home" / "guardforge.db").exists()  # building a Studio opens nothing
    assert studio.jobs.database is studio.database and studio.keys.database is studio.database
    assert studio.guard.audit.database is studio.database
    assert studio.jobs.engine is studio.keys.engine is studio.database.engine  # one engine, one pool
    key, plaintext = studio.keys.create("alice")
    studio.jobs.submit("generate", {}, owner=key.id)
    studio.guard.check_prompt("a tree")
    tables = set(studio.database.metadata.tables)
    assert {"gf_jobs", "gf_images", "gf_api_keys", "guard_audit"} <= tables
    # Another process (the CLI) opening the same file sees all of it.
    reopened = Database(studio.settings.resolved_database_url)
    assert KeyStore(reopened).verify(plaintext) == key.id
    assert [job.owner for job in JobQueue(reopened).list(None)] == [key.id]
    assert AuditLog(reopened).recent(1)[0]["checkpoint"] == "prompt"


def test_sqlite_gets_its_folder_wal_and_busy_timeout_on_first_use(tmp_path):
    path = tmp_path / "sub" / "folder" / "gf.db"
    database = Database(f"sqlite:///{path}", busy_timeout_s=7)
    assert not path.parent.exists()
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    assert path.is_file()


def test_tables_are_defined_once_per_database_and_never_shared_between_databases(tmp_path):
    first = Database(f"sqlite:///{tmp_path / 'a.db'}")
    second = Database(f"sqlite:///{tmp_path / 'b.db'}")
    assert JobQueue(first).tables is JobQueue(first).tables
    assert JobQueue(first).tables.jobs.metadata is first.metadata
    assert JobQueue(second).tables.jobs is not JobQueue(first).tables.jobs
    assert KeyStore(first).table is AuditLog(first).table.metadata.tables["gf_api_keys"]


def test_no_module_holds_a_metadata():
    # Tables at module level were one MetaData every database shared: mutable state DESIGN.md rules out.
    names = ["guardforge.db", "guardforge.guard.audit"]
    for package in (guardforge.access, guardforge.jobs, guardforge.storage):
        names += [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    found = [f"{name}.{attribute}" for name in names
             for attribute, value in vars(importlib.import_module(name)).items() if isinstance(value, MetaData)]
    assert found == []
