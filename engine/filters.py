"""The filter language of the console's ``/`` and of ``fsat runs --filter`` / ``fsat jobs --filter``.

A query is terms joined by spaces (AND), ``OR`` and ``NOT`` (or a leading
``-``), with parentheses::

    model:cnn14 cv>0.8 status:done tag:best
    (model:cnn14 OR model:resnet38) NOT tag:broken
    name:noisy cv>=0.75 created>7d

A term is ``field OP value`` with OP one of ``:`` ``=`` ``!=`` ``>`` ``>=``
``<`` ``<=``. On a text field ``:`` and ``=`` mean "equals, ignoring case";
a value with ``*`` matches as a wildcard (``name:cnn14*``); ``model``
matches a run's whole label (``cnn14-64mel``) or its architecture, the part
before the ``-`` (``model:cnn14``); the free-text
fields (name, note, message, error) match ``:`` as "contains". On a number
``:`` means ``=``. ``none`` as a value matches a missing value
(``test:none``). A time field takes an ISO date (``created>2026-11-30``) or
an age (``started<2h``: less than two hours ago; ``d``, ``h``, ``m``, ``s``).
A word without a field matches the id or the name (contains).

Case is ignored for every letter, not only A-Z: SQLite's ``NOCASE`` and
``LIKE`` fold ASCII alone, so a value with other letters (``tag:ÉTÉ``) is
compared through :func:`fold` (Unicode case folding), which every connection
of ``engine.store`` registers as the SQL function ``fsat_fold``. Nothing in
the schema uses it, so the file stays readable by any SQLite client; an ASCII
value keeps the indexed ``NOCASE`` comparison.

The compiler is plain text-to-SQL over a fixed table of fields: it returns a
``WHERE`` fragment with named parameters (``:f0``, ``:f1``…) that
``engine.store`` executes; values never enter the SQL text. Every field
maps to an indexed column (or, for tags, an indexed lookup table), so a
filter stays fast at 10,000 runs. Errors are one line naming the token and
its column.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from engine.errors import FsatError
from engine.intake import KINDS, RUN_KINDS
from engine.store.functions import FOLD_FUNCTION, fold, register_functions


class FilterError(FsatError):
    """A filter that cannot be compiled; the message names the token and its position."""


@dataclass(frozen=True)
class Field:
    """One filterable field: the SQL expression it compares and how values are read."""

    sql: str
    #: "ident" (exact), "text" (equality ignoring case / wildcard), "model" (text, or the label's
    #: architecture before its "-"), "contains" (substring), "number", "time", "tag"
    kind: str
    about: str = ""
    #: The only values a text field holds (compared ignoring case); another is an error naming them.
    choices: tuple[str, ...] = ()


#: Run fields, against ``runs r`` (the store's run queries alias the table as ``r``).
RUN_FIELDS: dict[str, Field] = {
    "id": Field("r.id", "ident", "run id"),
    "name": Field("r.name", "contains", "run name (contains)"),
    "model": Field("r.model", "model", "model: the architecture (cnn14) or the whole label (cnn14-64mel)"),
    "kind": Field("r.kind", "text", ", ".join(RUN_KINDS)),
    "status": Field("r.status", "text", "running, done, failed, cancelled, interrupted",
                    ("running", "done", "failed", "cancelled", "interrupted")),
    "cv": Field("r.cv_lwlrap", "number", "out-of-fold (CV) LWLRAP"),
    "test": Field("r.test_lwlrap", "number", "test LWLRAP"),
    "seed": Field("r.seed", "number", "seed"),
    "job": Field("r.job_id", "number", "job id"),
    "parent": Field("r.parent_run_id", "ident", "the run an infer run was made from"),
    "device": Field("r.device", "text", "cpu, cuda…"),
    "config": Field("r.config_hash", "ident", "config hash"),
    "tag": Field("r.id IN (SELECT t.run_id FROM run_tags t WHERE {cmp})", "tag", "a tag"),
    "note": Field("r.note", "contains", "note (contains)"),
    "archived": Field("r.archived", "number", "1 for archived runs"),
    "created": Field("r.created_at", "time", "when the run was created"),
    "finished": Field("r.finished_at", "time", "when the run finished"),
}
RUN_ALIASES = {"run": "id", "lwlrap": "cv", "cv_lwlrap": "cv", "oof": "cv", "test_lwlrap": "test",
               "tags": "tag", "arch": "model", "state": "status"}

#: Job fields, against ``jobs j``.
JOB_FIELDS: dict[str, Field] = {
    "id": Field("j.id", "number", "job id"),
    "kind": Field("j.kind", "text", ", ".join(KINDS)),
    "name": Field("j.name", "contains", "job name (contains)"),
    "status": Field("j.status", "text", "queued, running, done, failed, cancelled",
                    ("queued", "running", "done", "failed", "cancelled")),
    "run": Field("j.run_id", "ident", "the run it produces"),
    "priority": Field("j.priority", "number", "priority"),
    "progress": Field("j.progress", "number", "progress 0-1"),
    "attempts": Field("j.attempts", "number", "attempts used"),
    "message": Field("j.message", "contains", "progress message (contains)"),
    "error": Field("j.error", "contains", "error (contains)"),
    "worker": Field("j.worker_id", "ident", "worker id"),
    "created": Field("j.created_at", "time", "when queued"),
    "started": Field("j.started_at", "time", "when first started"),
    "finished": Field("j.finished_at", "time", "when it ended"),
}
JOB_ALIASES = {"job": "id", "run_id": "run", "state": "status"}

#: What a word without a field matches (contains), per table.
_BARE = {"runs": ("r.id", "r.name"), "jobs": ("j.name", "j.kind", "CAST(j.id AS TEXT)")}

#: Bounds on a query. SQLite's parser holds about 30 nested groups (its stack is 100 entries deep), far
#: less than Python's recursion limit: the costliest nesting, ``(tag:a OR model:b (...))``, fails there at
#: 15 levels (measured, SQLite 3.40). So a filter nested past MAX_DEPTH (parentheses, NOT and ``-`` each
#: count one) is refused first, as are more terms (SQLite's expression depth is 1000) or a longer text.
MAX_DEPTH = 10
MAX_TERMS = 200
MAX_LENGTH = 4000

_OPS = ("!=", ">=", "<=", ":", "=", ">", "<")
_TOKEN = re.compile(r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<word>(?:"[^"]*"|'[^']*'|[^\s()"'])+))""")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class Compiled:
    """A compiled filter: ``sql`` is a WHERE fragment ("1" for an empty query) with named ``params``."""

    sql: str
    params: dict[str, object] = field(default_factory=dict)
    text: str = ""


@dataclass
class _Tok:
    kind: str  # "(", ")", "word"
    text: str
    col: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            quote = text[pos:].lstrip()[:1]
            col = len(text) - len(text[pos:].lstrip()) + 1
            if quote in "\"'":
                raise FilterError(f"filter: unclosed quote {quote} at column {col}")
            raise FilterError(f"filter: cannot read {text[pos:].strip()!r} at column {col}")
        start = m.start(m.lastgroup)
        kind = {"lp": "(", "rp": ")", "word": "word"}[m.lastgroup or "word"]
        out.append(_Tok(kind, m.group(m.lastgroup), start + 1))
        pos = m.end()
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


class _Compiler:
    def __init__(self, fields: dict[str, Field], aliases: dict[str, str], bare: tuple[str, ...],
                 now: Callable[[], float]) -> None:
        self.fields = fields
        self.aliases = aliases
        self.bare = bare
        self.now = now
        self.params: dict[str, object] = {}
        self.toks: list[_Tok] = []
        self.i = 0
        self.depth = 0

    def param(self, value: object) -> str:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    # -- grammar: or := and (OR and)* ; and := unary+ ; unary := NOT unary | ( or ) | term --

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def parse(self, toks: list[_Tok]) -> str:
        self.toks = toks
        sql = self.or_expr()
        tok = self.peek()
        if tok is not None:
            raise FilterError(f"filter: unexpected {tok.text!r} at column {tok.col} (unbalanced parenthesis?)")
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "word" and tok.text.upper() == "OR":
            self.i += 1
            parts.append(self.and_expr(after=tok))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self, after: _Tok | None = None) -> str:
        parts: list[str] = []
        while (tok := self.peek()) is not None and tok.kind != ")":
            if tok.kind == "word" and tok.text.upper() == "OR":
                break
            if tok.kind == "word" and tok.text.upper() == "AND":
                self.i += 1
                continue
            parts.append(self.unary())
        if not parts:
            tok = self.peek()
            where = f"before {tok.text!r} at column {tok.col}" if tok else "at the end"
            what = f"after {after.text!r} at column {after.col}" if after else where
            raise FilterError(f"filter: a term is missing {what}")
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def unary(self) -> str:
        tok = self.toks[self.i]
        if tok.kind == "word" and tok.text.upper() == "NOT":
            self.i += 1
            if self.peek() is None:
                raise FilterError(f"filter: NOT at column {tok.col} has nothing to negate")
            with self.nested(tok):
                return f"NOT ({self.unary()})"
        if tok.kind == "(":
            self.i += 1
            with self.nested(tok):
                inner = self.or_expr()
            close = self.peek()
            if close is None or close.kind != ")":
                raise FilterError(f"filter: the parenthesis at column {tok.col} is never closed")
            self.i += 1
            return inner
        if tok.kind == ")":
            raise FilterError(f"filter: unexpected ')' at column {tok.col}")
        self.i += 1
        if tok.text.startswith("-") and len(tok.text) > 1 and not _is_number(tok.text):
            with self.nested(tok):
                return f"NOT ({self.term(_Tok('word', tok.text[1:], tok.col + 1))})"
        return self.term(tok)

    @contextmanager
    def nested(self, tok: _Tok) -> Iterator[None]:
        """One level deeper (a parenthesis, NOT or ``-``); past MAX_DEPTH the filter is refused."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"filter: nested too deeply at column {tok.col}: at most {MAX_DEPTH} levels of "
                              "parentheses, NOT and '-'")
        try:
            yield
        finally:
            self.depth -= 1

    def term(self, tok: _Tok) -> str:
        text = tok.text
        match = None
        for m in re.finditer(r"!=|>=|<=|:|=|>|<", text):
            match = m
            break
        if match is None or text.startswith(("'", '"')):
            value = _unquote(text)
            return "(" + " OR ".join(self.contains(col, value) for col in self.bare) + ")"
        name, op, raw = text[:match.start()].lower(), match.group(), text[match.end():]
        if not name:
            raise FilterError(f"filter: {text!r} at column {tok.col} has no field before {op!r}")
        key = self.aliases.get(name, name)
        spec = self.fields.get(key)
        if spec is None:
            raise FilterError(f"filter: unknown field {name!r} at column {tok.col}; fields: "
                              + ", ".join(sorted(self.fields)))
        if raw == "":
            raise FilterError(f"filter: {text!r} at column {tok.col} needs a value after {op!r}")
        value = _unquote(raw)
        where = f"{text!r} at column {tok.col}"
        if value.lower() in ("none", "null", "-") and spec.kind != "tag":
            if op in (":", "="):
                return f"{spec.sql} IS NULL"
            if op == "!=":
                return f"{spec.sql} IS NOT NULL"
            raise FilterError(f"filter: {where}: {op!r} cannot compare with none")
        if spec.kind == "number":
            try:
                number = float(value)
            except ValueError:
                raise FilterError(f"filter: {where}: {key} takes a number, got {value!r}") from None
            sql_op = "=" if op == ":" else op
            return f"{spec.sql} {sql_op} {self.param(number)}"
        if spec.kind == "time":
            moment, is_age = self.moment(value, where)
            # An age reads as "ago": created<2h means newer than two hours ago.
            sql_op = "=" if op == ":" else op
            if is_age:
                sql_op = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "=": "=", "!=": "!="}[sql_op]
            if sql_op in ("=", "!="):
                if is_age:
                    raise FilterError(f"filter: {where}: use > or < with an age")
                # A date equals the whole day.
                lo, hi = self.param(moment), self.param(moment + 86400)
                inside = f"({spec.sql} >= {lo} AND {spec.sql} < {hi})"
                return inside if sql_op == "=" else f"NOT {inside}"
            return f"{spec.sql} {sql_op} {self.param(moment)}"
        if op in (">", ">=", "<", "<="):
            raise FilterError(f"filter: {where}: {key} is text; use ':' or '!='")
        if spec.choices and "*" not in value and value.lower() not in spec.choices:
            raise FilterError(f"filter: {where}: {key} is one of {', '.join(spec.choices)}")
        if spec.kind == "tag":
            cmp = self.text_cmp("t.tag", value)
            sql = spec.sql.format(cmp=cmp)
            return f"NOT ({sql})" if op == "!=" else sql
        if spec.kind == "contains" and "*" not in value:
            cmp = self.contains(spec.sql, value)
        elif spec.kind == "ident" and "*" not in value:
            # Ids are compared exactly, so the primary key or its index answers.
            cmp = f"{spec.sql} = {self.param(value)}"
        elif spec.kind == "model" and "*" not in value and value.isascii():
            # Runs record labels such as cnn14-64mel: the word matches the label or its architecture.
            # A range on the NOCASE index ('-' is followed by '.') keeps the lookup indexed.
            col = spec.sql
            cmp = (f"({col} = {self.param(value)} COLLATE NOCASE OR ({col} >= {self.param(value + '-')} COLLATE NOCASE "
                   f"AND {col} < {self.param(value + '.')} COLLATE NOCASE))")
        else:
            cmp = self.text_cmp(spec.sql, value)
        return f"NOT ({cmp})" if op == "!=" else cmp

    def text_cmp(self, column: str, value: str) -> str:
        column, value = self.folded(column, value)
        if "*" in value:
            pattern = _escape_like(value).replace("*", "%")
            return f"{column} LIKE {self.param(pattern)} ESCAPE '\\'"
        if value.isascii():
            # Equality ignoring case; COLLATE NOCASE keeps an index on the column usable for '='.
            return f"{column} = {self.param(value)} COLLATE NOCASE"
        return f"{column} = {self.param(value)}"

    def contains(self, column: str, value: str) -> str:
        """``column`` contains ``value``, ignoring case."""
        column, value = self.folded(column, value)
        return f"{column} LIKE {self.param('%' + _escape_like(value) + '%')} ESCAPE '\\'"

    @staticmethod
    def folded(column: str, value: str) -> tuple[str, str]:
        """An ASCII value as it is (NOCASE and LIKE fold A-Z); another through :func:`fold` on both sides."""
        if value.isascii():
            return column, value
        return f"{FOLD_FUNCTION}({column})", fold(value) or ""

    def moment(self, value: str, where: str) -> tuple[float, bool]:
        age = _AGE.match(value.lower())
        if age:
            return self.now() - float(age.group(1)) * _AGE_SECONDS[age.group(2)], True
        try:
            day = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise FilterError(f"filter: {where}: expected a date (2026-11-30) or an age (7d, 2h, 30m)") from None
        if day.tzinfo is None:
            day = day.astimezone()  # a date typed by the user is local time
        return day.timestamp(), False


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_filter(text: str, table: str = "runs", *, now: Callable[[], float] = time.time) -> Compiled:
    """Compile a filter for ``table`` (``runs`` or ``jobs``) to a WHERE fragment with named parameters.

    An empty or blank query compiles to ``1`` (everything). Raises
    :class:`FilterError` with one line naming the bad token and its column.
    """
    if table not in _BARE:
        raise ValueError(f"no filter fields for table {table!r}")
    text = text or ""
    if not text.strip():
        return Compiled("1", {}, text)
    fields, aliases = (RUN_FIELDS, RUN_ALIASES) if table == "runs" else (JOB_FIELDS, JOB_ALIASES)
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter: {len(text)} characters; at most {MAX_LENGTH}")
    toks = _tokens(text)
    terms = sum(1 for t in toks if t.kind == "word" and t.text.upper() not in ("AND", "OR", "NOT"))
    if terms > MAX_TERMS:
        raise FilterError(f"filter: {terms} terms; at most {MAX_TERMS}")
    compiler = _Compiler(fields, aliases, _BARE[table], now)
    sql = compiler.parse(toks)
    return Compiled(sql, compiler.params, text)


def field_help(table: str = "runs") -> list[tuple[str, str]]:
    """(field, what it is) for the help screen and error messages."""
    fields = RUN_FIELDS if table == "runs" else JOB_FIELDS
    return [(name, spec.about) for name, spec in fields.items()]


__all__ = ["Compiled", "FOLD_FUNCTION", "FilterError", "JOB_FIELDS", "RUN_FIELDS", "compile_filter", "field_help", "fold",
           "register_functions"]
