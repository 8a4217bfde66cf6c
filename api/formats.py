"""Patterns for the strings the api parses itself, so /openapi.json says exactly what is accepted.

Each pattern describes a set of strings that are all accepted; tests generate strings from them and check.
"""

from __future__ import annotations

# A cursor is URL-safe base64, unpadded, of `v1:<seq>`. `v1:` is three bytes, so it encodes on its own to
# `djE6`; the decimal digits that follow encode three at a time: a digit is a byte 0x30-0x39, which fixes
# most bits of each base64 character. Up to 18 digits: every such seq is inside the 64-bit range.
_THREE_DIGITS = r"(?:[MN][DTjz]|O[DT])[AEIMQUYcgk][w-z0-5]"
_ONE_DIGIT = r"(?:[MN][AQgw]|O[AQ])"
_TWO_DIGITS = r"(?:[MN][DTjz]|O[DT])[AEIMQUYcgk]"
CURSOR_PATTERN = (
    rf"^djE6(?:(?:{_THREE_DIGITS}){{0,5}}(?:{_ONE_DIGIT}|{_TWO_DIGITS})|(?:{_THREE_DIGITS}){{1,6}})$"
)

# ISO 8601 as the api reads it: a date, optionally a time (`T` or a space) to the minute, second or
# microsecond, optionally `Z` or an offset (none means UTC). Days valid in every year (29 February only
# where it exists is left out), years 1000-9998 so that no offset moves the instant out of years 1-9999.
_YEAR = r"(?:[1-8][0-9]{3}|9[0-8][0-9][0-9]|99[0-8][0-9]|999[0-8])"
_MONTH_DAY = (
    r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
TIMESTAMP_PATTERN = rf"^{_YEAR}-{_MONTH_DAY}(?:[T ]{_TIME}{_OFFSET}?)?$"
