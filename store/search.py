"""What GET /events' `q=` and `payload.<field>=` mean, the same on both backends.

Words. A word is a maximal run of Unicode letters and digits (Python's `[^\\W_]`: `_` and punctuation
separate), compared in lower case. The searched values are the event's `source` and every string in its
payload, at any depth (object keys, numbers and booleans are not text values).

`q=` is words and quoted phrases: `timeout "disk full" db01`. Every word and every phrase must match (AND),
in any of the values; a phrase's words must follow each other within one value. A quote left open runs to
the end of `q`. A `q` without words (empty, or only punctuation) narrows nothing, as an empty search box.

`payload.<field>=<value>` matches a top-level payload field holding a string equal to `<value>`, or, when
`<value>` reads as JSON `true`, `false`, `null` or a number, that value (numbers by numeric value: `500`
matches 500 and 500.0). Several such filters combine with AND; arrays and objects never match.

The writer stores, per event, the values' words as one text (`search_text`: values apart by BREAK, so no
phrase spans two of them) and one token per top-level scalar field (`field_tokens`); both backends index
exactly these, and translate a `Search` into their own query over them, so they agree on every answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DecimalException
from hashlib import blake2b
from typing import Any, Final

_WORD = re.compile(r"[^\W_]+")
_QUOTED = re.compile(r'"([^"]*)"?')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Between two values' words: never a word itself (not a letter or digit), so a phrase cannot run across it.
BREAK: Final = "\u00b7"
# At most this many payload.<field>= filters in one request (the api bounds q's length).
MAX_FIELDS: Final = 8
FIELD_PREFIX: Final = "payload."


# The consumer_state key recording SEARCH (on/off), so readers and every writer agree on it.
STATE_KEY: Final = "search"


class SearchOff(Exception):
    """A search asked of a store whose consumer does not index for it (SEARCH is not on)."""

    def __init__(self) -> None:
        super().__init__(
            "search is off in this store: start the consumer with SEARCH=on; it indexes the events already "
            "stored, then every new one (it costs ingest, see README)"
        )


class BadSearch(ValueError):
    """`q=` or a `payload.<field>=` that cannot be searched for; the message says why."""


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: every phrase (a word is a phrase of one) and every field (any one of its tokens)
    must match."""

    phrases: tuple[tuple[str, ...], ...] = ()
    fields: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.phrases or self.fields)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def parse_q(q: str) -> tuple[tuple[str, ...], ...]:
    """`q` as phrases: each unquoted word alone, each quoted run as one phrase (its words in order)."""
    phrases: list[tuple[str, ...]] = []
    at = 0
    for match in _QUOTED.finditer(q):
        phrases += [(w,) for w in words(q[at : match.start()])]
        quoted = tuple(words(match[1]))
        if quoted:
            phrases.append(quoted)
        at = match.end()
    phrases += [(w,) for w in words(q[at:])]
    return tuple(dict.fromkeys(phrases))


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, depth first, in document order (object keys left out)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def search_text(source: str, payload: Mapping[str, Any]) -> str:
    """The words of the source and of each payload string, one space apart, values apart by BREAK, with a
    space at each end (so PostgreSQL's `LIKE '% w %'` finds a word anywhere)."""
    values = [" ".join(found) for found in map(words, (source, *strings(payload))) if found]
    return f" {f' {BREAK} '.join(values)} "


# Numbers compare by value to this many significant digits (far beyond a float's 17).
_NUMBERS = Context(prec=1000, Emax=MAX_EMAX, Emin=MIN_EMIN)


_PLAIN = 10**30  # integers below it are written as they are: the common case, and the fast one


# A word longer than this is indexed by its hash in PostgreSQL's word array (a GIN entry must fit in a
# third of a page); its exact text is still compared by the phrase check.
_LONG_WORD = 100


def term(word: str) -> str:
    """A word as PostgreSQL's word array holds it: itself, or `~` and a hash when it is long."""
    if len(word) <= _LONG_WORD:
        return word
    return "~" + blake2b(word.encode(), digest_size=16).hexdigest()


def terms(text: str) -> list[str]:
    """The distinct words of a `search_text`, as `term`s."""
    return sorted({term(w) for w in text.split() if w != BREAK})


def _number(value: Decimal) -> str:
    """One text per numeric value: an integer as its digits, any other number normalised (5E+35, 0.5)."""
    if value.is_zero():
        return "0"
    if value == value.to_integral_value() and abs(value) < _PLAIN:
        return str(int(value))
    return str(_NUMBERS.normalize(value))


def _token(name: str, kind: str, value: str) -> str:
    digest = blake2b(f"{name}\x00{kind}\x00{value}".encode(), digest_size=12).hexdigest()
    return f"f{digest}"


def _scalar(name: str, value: Any) -> str | None:
    if isinstance(value, str):
        return _token(name, "s", value)
    if value is None:
        return _token(name, "z", "")
    if isinstance(value, bool):
        return _token(name, "b", "true" if value else "false")
    if isinstance(value, int):
        return _token(name, "n", str(value) if abs(value) < _PLAIN else _number(Decimal(value)))
    if isinstance(value, float):
        return _token(name, "n", _number(Decimal(repr(value))))  # as the payload's JSON text writes it
    return None  # arrays and objects are not compared


def field_tokens(payload: Mapping[str, Any]) -> list[str]:
    """One token per top-level scalar field: its name, type and value (numbers normalised)."""
    return [token for name, value in payload.items() if (token := _scalar(name, value)) is not None]


def field_candidates(name: str, value: str) -> tuple[str, ...]:
    """The tokens a stored field may hold to match `payload.<name>=<value>`: the string, and the scalar
    `value` reads as in JSON, if any."""
    if not name:
        raise BadSearch("payload.<field>= needs a field name after 'payload.'")
    found = [_token(name, "s", value)]
    if value in ("true", "false"):
        found.append(_token(name, "b", value))
    elif value == "null":
        found.append(_token(name, "z", ""))
    elif _NUMBER.fullmatch(value):
        try:
            found.append(_token(name, "n", _number(Decimal(value))))
        except DecimalException:  # beyond what a Decimal holds: only the string can match
            pass
    return tuple(found)


def parse_fields(pairs: list[tuple[str, str]]) -> tuple[tuple[str, ...], ...]:
    """`payload.<field>=<value>` query parameters (name without the prefix) as candidate tokens."""
    if len(pairs) > MAX_FIELDS:
        raise BadSearch(f"{len(pairs)} payload.<field>= filters; at most {MAX_FIELDS} combine")
    return tuple(dict.fromkeys(field_candidates(name, value) for name, value in pairs))


def parse(q: str | None, pairs: list[tuple[str, str]]) -> Search | None:
    """The search a request asks for, or None when it asks for none."""
    phrases = parse_q(q) if q is not None else ()
    fields = parse_fields(pairs)
    found = Search(phrases, fields)
    return found if found else None
