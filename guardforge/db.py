"""The studio's one database: an engine with the settings every user of it needs, and the tables they define."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import MetaData, Table, create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

T = TypeVar("T")

# PostgreSQL: the queue, the key store and the audit log once had two engines of SQLAlchemy's default 5 + 10
# connections; their one engine keeps that ceiling, so the worker threads and the server's thread pool wait no
# more for a connection than before.
POOL_SIZE = 10
MAX_OVERFLOW = 20


class Database:
    """A SQLite file or a PostgreSQL server, by SQLAlchemy URL, shared by the job queue, the key store and the
    guard's audit log.

    Building one touches nothing: the engine (and a SQLite file's folder) is made on first use of `engine`, so
    building a Studio or a Guard opens no connection and creates no file.

    - SQLite: WAL (readers go on while the worker writes), a busy timeout (how long a write waits for another
      writer's lock before "database is locked"), and secure_delete (purged pixels are zeroed in the file).
    - PostgreSQL (any other URL): pool_pre_ping, so a connection the server dropped (a restart) is replaced
      before use rather than failing the first statement after it; a pool sized for the three users together.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0, pool_size: int = POOL_SIZE,
                 max_overflow: int = MAX_OVERFLOW) -> None:
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.metadata = MetaData()
        self._engine: Engine | None = None
        self._defined: dict[Callable, object] = {}
        self._created: set[str] = set()
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()  # threads of one process wait for one create_all, not race it

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def _make_engine(self) -> Engine:
        if not self.is_sqlite:
            return create_engine(self.url, pool_pre_ping=True, pool_size=self.pool_size,
                                 max_overflow=self.max_overflow)
        database = make_url(self.url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the worker threads and the server's thread pool share the pooled connections.
        engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": self.busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine

    def define(self, tables: Callable[[MetaData], T]) -> T:
        """What `tables(self.metadata)` returns (tables and the statements built on them), made once per
        Database: a second JobQueue or KeyStore on it shares the first one's tables."""
        with self._lock:
            if tables not in self._defined:
                self._defined[tables] = tables(self.metadata)
            return self._defined[tables]  # type: ignore[return-value]

    def create(self, *tables: Table) -> None:
        """Create those of `tables` the database lacks (a no-op for tables this object already created)."""
        if all(table.name in self._created for table in tables):
            return
        with self._create_lock:
            self._create([table for table in tables if table.name not in self._created])

    def _create(self, missing: list[Table]) -> None:
        if not missing:
            return
        engine = self.engine
        try:
            self.metadata.create_all(engine, tables=missing)
        except (OperationalError, ProgrammingError, IntegrityError):
            # create_all checks, then creates: another process (the server beside a CLI, a second worker) may
            # create a table in between (SQLite says "already exists"; PostgreSQL a unique violation in its
            # catalogue). Checking again sees what it made and makes whatever is still missing.
            try:
                self.metadata.create_all(engine, tables=missing)
            except (OperationalError, ProgrammingError, IntegrityError):
                present = inspect(engine)
                if not all(present.has_table(table.name) for table in missing):
                    raise
        self._created.update(table.name for table in missing)

    def add_columns(self, table: Table, columns: dict[str, str]) -> None:
        """Add to `table` those of `columns` (name -> SQL type and default, as ALTER TABLE takes them) that a
        database made by an older release lacks: create_all never alters an existing table."""
        engine = self.engine
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for name, ddl in columns.items():
            if name in present:
                continue
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}"))
            except (OperationalError, ProgrammingError):
                # Another process (a second server, a CLI) may have added it between our look and our ALTER.
                if name not in {column["name"] for column in inspect(engine).get_columns(table.name)}:
                    raise

    def dispose(self) -> None:
        """Close the pooled connections (the engine makes new ones if used again)."""
        with self._lock:
            engine = self._engine
        if engine is not None:
            engine.dispose()
