"""Which SQL a reading tool may send: one read statement, nothing that writes anywhere.

ClickHouse ``readonly=1`` (on every reading connection) is what enforces it; this check runs
first so a refused statement gets one clear sentence whichever way it arrives, and it covers
what ``readonly=1`` lets through: ``KILL QUERY`` (it would stop the sink's inserts), a second
statement after ``;`` and ``INTO OUTFILE`` (the embedded engine writes the file).
"""

from __future__ import annotations

import re

from sealtrail.infra.errors import WriteRefused

__all__ = ["READ_STATEMENTS", "require_read_only"]

READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokens(sql: str) -> list[str]:
    """Words (upper-cased) and punctuation outside string literals, quoted names and comments.

    Only ``--`` and ``/* */`` count as comments and only quotes start literals: whatever this
    reads differently from ClickHouse makes it see more tokens, never fewer, so a mistake
    refuses a statement instead of letting one through.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
            i += 1
            out.append("literal")
        else:
            match = _WORD.match(sql, i)
            if match:
                out.append(match.group().upper())
                i = match.end()
            else:
                out.append(ch)
                i += 1
    return out


def require_read_only(sql: str) -> None:
    """Raise :class:`WriteRefused` (one sentence) unless ``sql`` is one read statement."""
    tokens = _tokens(sql)
    while tokens and tokens[-1] == ";":
        tokens.pop()
    if not tokens:
        raise WriteRefused("the query is empty; pass one SELECT statement")
    first = next((t for t in tokens if t != "("), "")
    if first not in READ_STATEMENTS:
        raise WriteRefused(
            f"{first or tokens[0]} statements are refused: reading tools are read-only and run "
            "only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN and EXISTS (the sink's migrations change "
            "the schema); check the SQL"
        )
    if ";" in tokens:
        raise WriteRefused("only one statement runs per query; remove the ';' and what follows it")
    for a, b in zip(tokens, tokens[1:], strict=False):
        if a == "INTO" and b == "OUTFILE":
            raise WriteRefused(
                "INTO OUTFILE writes a file and is refused; use --format csv or json and "
                "redirect the output instead"
            )
