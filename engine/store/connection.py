"""The connection: opening a database for reading or writing, WAL, the write transaction, errors.

Every process (the console, each worker, each job child) opens its own
connection: WAL mode so readers never block the writer, ``busy_timeout`` so
a briefly held lock waits instead of failing, and every write is one short
``BEGIN IMMEDIATE`` transaction (:meth:`Connection.write`) so two writers
never deadlock upgrading a read lock. Readers open the file read-only and
never write, not even the schema, so they never wait on a writer. An SQLite
error a user can cause or fix becomes a :class:`StoreError` of one line
naming the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Self, Sequence
from urllib.parse import quote

import engine.store as _package
from engine.errors import FsatError
from engine.store.functions import register_functions
from engine.store.schema import SCHEMA_VERSION, migrate, read_schema_version


class StoreError(FsatError):
    """A store operation that cannot be done (unknown job, wrong state, a database that cannot be used)."""


def now() -> float:
    """The store's clock (Unix seconds): ``engine.store._now``, looked up at every call.

    Every timestamp the store writes comes from here, so a test that pins
    ``engine.store._now`` (to write a database with fixed times) pins them all.
    """
    return _package._now()


def default_db_path() -> Path:
    """The database the console and CLI use: ``$FSAT_DB`` or ``./experiments.db``."""
    return Path(os.environ.get("FSAT_DB", "experiments.db"))


def runs_root(db_path: Path | str) -> Path:
    """Where run artifacts live: ``$FSAT_RUNS`` or ``runs/`` beside the database."""
    env = os.environ.get("FSAT_RUNS")
    if env:
        return Path(env)
    return Path(db_path).resolve().parent / "runs"


def new_database_notice(db_path: Path | str) -> str:
    """What to say when ``db_path`` is about to be created beside other databases ('' otherwise).

    Names the SQLite databases already in that folder (``experiments.db``
    beside a mistyped ``experiment.db``), since a second database there is
    most often a typo; a first database in a folder is created quietly.
    """
    path = Path(db_path)
    if path.exists():
        return ""
    folder = path.resolve().parent
    neighbours = []
    if folder.is_dir():
        for other in sorted(folder.iterdir()):
            try:
                if other.is_file() and other.suffix in (".db", ".sqlite", ".sqlite3"):
                    with open(other, "rb") as fh:
                        if fh.read(16) == b"SQLite format 3\x00":
                            neighbours.append(other.name)
            except OSError:
                continue
    if not neighbours:
        return ""
    return (f"no database at {path}: creating a new database there; this folder already holds "
            f"{', '.join(neighbours)} (use --db or $FSAT_DB to open {'it' if len(neighbours) == 1 else 'one of them'}"
            " instead)")


class Connection:
    """The connections of one :class:`engine.store.Store`: a reader, a writer (or one for both), their locks.

    The queue, the run records and the listings are built on this class;
    see :class:`engine.store.Store` for the three ways to open it.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, timeout: float = 30.0,
                 schema_version: int | None = None, lazy: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.timeout = timeout
        self._target = schema_version
        self._create = create
        self._writer: sqlite3.Connection | None = None
        if readonly or (lazy and self.path.exists()):
            # Reads and writes use separate connections, so a write waiting for
            # another process's lock never holds up a read.
            self._read_lock = threading.RLock()
            self._write_lock = threading.RLock()
            self.conn = self._open_reader()
        else:
            self._read_lock = self._write_lock = threading.RLock()
            self.conn = self._writer = self._open_writer()

    # -- plumbing -----------------------------------------------------------------

    def _open_reader(self) -> sqlite3.Connection:
        """A read-only connection: no schema write, no WAL switch, no migration."""
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such database; check the path (--db or $FSAT_DB), "
                             "or queue a job or start a worker there to create one")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a database file")
        resolved = quote(str(self.path.resolve()))
        # A WAL database in a folder nobody may write to can only be read as
        # immutable: there the -shm file cannot be made, and no writer can work either.
        flags = "mode=ro" if os.access(self.path.resolve().parent, os.W_OK) else "mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(f"file:{resolved}?{flags}", uri=True, isolation_level=None,
                                   timeout=self.timeout, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            register_functions(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA query_only = ON")
            version = self._check_version(conn)
        except sqlite3.Error as err:
            raise self._error(err) from None
        if version == 0:
            conn.close()
            raise StoreError(f"{self.path}: an SQLite file without the fsat-console schema; "
                             "check the path (--db or $FSAT_DB)")
        if version < SCHEMA_VERSION and self._target is None:
            # A file an older release wrote: the read queries need today's tables. Upgrade it once
            # (one short write transaction), then read as usual.
            conn.close()
            if not (os.access(self.path, os.W_OK) and os.access(self.path.resolve().parent, os.W_OK)):
                raise StoreError(f"{self.path}: schema version {version} is older than this fsat-console "
                                 f"({SCHEMA_VERSION}) and the database is read-only, so it cannot be "
                                 "upgraded; open it once where it can be written (e.g. start a worker on it)")
            self._open_writer().close()
            return self._open_reader()
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        """The writing connection: creates the file, switches it to WAL and upgrades its schema."""
        if not self.path.exists() and not self._create:
            raise StoreError(f"{self.path}: no such database; check the path (--db or $FSAT_DB)")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a database file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot create its folder: {err.strerror}") from None
        if self.path.exists() and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            what = "file" if not os.access(self.path, os.W_OK) else f"folder {self.path.parent}"
            raise StoreError(f"{self.path}: the database is read-only (its {what} cannot be written); "
                             "listings work, but nothing can be queued, cancelled or run on it")
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=self.timeout,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            register_functions(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            version = self._check_version(conn)
            target = SCHEMA_VERSION if self._target is None else self._target
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < target:
                self._migrate(conn, target)
        except sqlite3.Error as err:
            raise self._error(err) from None
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; refuses a file that is not a database or is newer than this code."""
        try:
            version = read_schema_version(conn)
        except sqlite3.DatabaseError as err:
            if "not a database" in str(err) or "malformed" in str(err):
                raise StoreError(f"{self.path}: not an SQLite database ({err}); "
                                 "check the path (--db or $FSAT_DB)") from None
            raise
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this fsat-console "
                f"({SCHEMA_VERSION}); upgrade fsat-console")
        return version

    def _error(self, err: sqlite3.Error) -> FsatError:
        """One line naming the file for an SQLite error a user can cause or fix."""
        if isinstance(err, FsatError):
            return err
        message = str(err)
        if "readonly" in message or "read-only" in message:
            return StoreError(f"{self.path}: the database is read-only ({message}); listings work, but "
                              "nothing can be queued, cancelled or run on it; make the file and its folder "
                              "writable")
        if "locked" in message or "busy" in message:
            return StoreError(f"{self.path}: another process held the database's write lock for more than "
                              f"{self.timeout:g} s ({message}); try again")
        if "unable to open" in message:
            return StoreError(f"{self.path}: cannot open the database ({message}); check the path and "
                              "the folder's permissions")
        if "not a database" in message or "malformed" in message:
            return StoreError(f"{self.path}: not an SQLite database ({message})")
        if "disk I/O" in message or "full" in message:
            return StoreError(f"{self.path}: cannot write the database ({message})")
        return StoreError(f"{self.path}: {message}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL, retrying while other processes hold it.

        The switch needs a moment of exclusive access, and SQLite can answer
        "database is locked" at once instead of waiting on ``busy_timeout``
        when several processes open a fresh file together; so retry with a
        short backoff until the timeout.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as err:
                message = str(err)
                if ("locked" not in message and "busy" not in message) or time.monotonic() >= deadline:
                    raise self._error(err) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def close(self) -> None:
        """Close the connections."""
        with self._write_lock:
            if self._writer is not None and self._writer is not self.conn:
                self._writer.close()
        with self._read_lock:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            if self.readonly:
                raise StoreError(f"{self.path}: opened for reading only")
            self._writer = self._open_writer()
        return self._writer

    @contextmanager
    def write(self, *, on_wait: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction; commits on success, rolls back on error.

        ``on_wait`` is called once when another process holds the write lock,
        before waiting for it (up to the timeout), so an interface can say so.
        An SQLite error a user can fix (read-only file, a lock held too long)
        becomes a StoreError naming the file.
        """
        with self._write_lock:
            conn = self._writer_conn()
            try:
                self._begin(conn, on_wait)
            except sqlite3.Error as err:
                raise self._error(err) from None
            try:
                yield conn
            except sqlite3.OperationalError as err:
                conn.execute("ROLLBACK")
                raise self._error(err) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as err:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise self._error(err) from None

    def _begin(self, conn: sqlite3.Connection, on_wait: Callable[[], None] | None) -> None:
        if on_wait is None:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        on_wait()
        conn.execute("BEGIN IMMEDIATE")

    def _query(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict]:
        """Rows of a read on the reading connection, as dicts."""
        with self._read_lock:
            try:
                return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
            except sqlite3.DatabaseError as err:
                raise self._error(err) from None

    def _migrate(self, conn: sqlite3.Connection, target: int) -> None:
        """Bring the schema to ``target`` through ``engine.store.schema.MIGRATIONS``, in one transaction.

        Several processes may start on a fresh or old file at once: the
        IMMEDIATE lock makes exactly one of them run the steps, the rest see
        them done. ``target`` below the current version exists for tests that
        build a database as an older release wrote it.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn, self._check_version(conn), target)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        row = self._query("SELECT value FROM meta WHERE key='schema_version'")
        return int(row[0]["value"]) if row else 0

    def database_id(self) -> str:
        """The database's id (``meta.database_id``, set when the schema reached version 12); '' before."""
        row = self._query("SELECT value FROM meta WHERE key='database_id'")
        return str(row[0]["value"]) if row else ""

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes whenever another connection commits."""
        with self._read_lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])
