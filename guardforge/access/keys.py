"""API keys, stored hashed (scrypt with a per-key salt) in the studio's database, beside the jobs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine

from guardforge.db import Database
from guardforge.errors import GuardforgeError, InvalidRequest

PREFIX = "gf"
MAX_PRIORITY = 100  # the highest job priority the API takes

def key_table(metadata: MetaData) -> Table:
    """The keys' table, added to `metadata` (one database's; see Database.define)."""
    return Table(
        "gf_api_keys", metadata,
        Column("id", String(16), primary_key=True),
        Column("name", String(128), nullable=False),
        Column("salt", String(64), nullable=False),
        Column("hash", String(128), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("revoked_at", Float),
        # The highest job priority the key may ask for. Added after the first release: KeyStore adds the column
        # to a database made before it (see _add_missing_columns), so keep new columns nullable or with a
        # default.
        Column("max_priority", Integer, nullable=False, default=0, server_default="0"),
    )


class KeyNotFound(GuardforgeError, LookupError):
    """No API key with that id (HTTP 404)."""


@dataclass
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked_at: float | None
    max_priority: int = 0


def _hash(secret: str, salt: bytes) -> str:
    # scrypt is deliberately slow to brute-force; n=2**14 costs ~15 ms per check, acceptable per request.
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32).hex()


class KeyStore:
    """Create, check, list and revoke keys of the form gf_<id>_<secret>; only the hash is kept."""

    def __init__(self, database: Database, cache_size: int = 1024):
        self.database = database
        self.engine = database.engine
        self.table = database.define(key_table)
        database.create(self.table)
        _add_missing_columns(self.engine, self.table)
        # Recently verified keys (the full key's sha256 -> its id), so a request does not pay scrypt every time.
        # Bounded, least recently used dropped first; it only skips the hash: the row (and its revocation) is
        # read on every check, so a key revoked by another process is refused on its next request too.
        self.cache_size = cache_size
        self._verified: OrderedDict[str, str] = OrderedDict()
        self._cache_lock = threading.Lock()  # checks run in the server's thread pool

    def create(self, name: str, max_priority: int = 0) -> tuple[ApiKey, str]:
        """A new key; the plaintext is returned once and never stored."""
        if not 0 <= max_priority <= MAX_PRIORITY:
            raise InvalidRequest(f"max_priority must be between 0 and {MAX_PRIORITY}, not {max_priority}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(id=key_id, name=name, salt=salt.hex(),
                                                    hash=_hash(secret, salt), created_at=now,
                                                    max_priority=max_priority))
        return ApiKey(key_id, name, now, None, max_priority), f"{PREFIX}_{key_id}_{secret}"

    def verify(self, key: str) -> str | None:
        """The key's id if `key` is a live key, else None. Slow on a miss (scrypt): call it off an event loop."""
        found = self.check(key)
        return found.id if found else None

    def check(self, key: str) -> ApiKey | None:
        """The key's record if `key` is a live key, else None (as verify)."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        _, key_id, secret = parts
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.id == key_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        fingerprint = hashlib.sha256(key.encode()).hexdigest()
        with self._cache_lock:
            if self._verified.get(fingerprint) == key_id:
                self._verified.move_to_end(fingerprint)
                return _record(row)
        if not hmac.compare_digest(_hash(secret, bytes.fromhex(row.salt)), row.hash):
            return None
        with self._cache_lock:
            self._verified[fingerprint] = key_id
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return _record(row)

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.table).order_by(self.table.c.created_at))
            return [_record(r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self.engine.begin() as conn:
            if not conn.execute(update(self.table).where(self.table.c.id == key_id)
                                .values(revoked_at=time.time())).rowcount:
                raise KeyNotFound(f"no API key {key_id!r}")
        with self._cache_lock:
            for fingerprint in [f for f, cached_id in self._verified.items() if cached_id == key_id]:
                del self._verified[fingerprint]
        return next(k for k in self.list() if k.id == key_id)


def _record(row) -> ApiKey:
    return ApiKey(row.id, row.name, row.created_at, row.revoked_at, row.max_priority)


def _add_missing_columns(engine: Engine, keys_table: Table) -> None:
    """Bring a keys table made by an older release up to date; create_all never alters an existing table."""
    present = {column["name"] for column in inspect(engine).get_columns(keys_table.name)}
    if "max_priority" in present:
        return
    try:
        with engine.begin() as conn:
            # Existing keys get the default, 0, like new ones: a key that should jump the queue is given it anew.
            conn.execute(text(f"ALTER TABLE {keys_table.name} ADD COLUMN max_priority INTEGER NOT NULL DEFAULT 0"))
    except Exception:
        # Another process (a CLI beside the server) may have added it between our look and our ALTER.
        if "max_priority" not in {c["name"] for c in inspect(engine).get_columns(keys_table.name)}:
            raise
