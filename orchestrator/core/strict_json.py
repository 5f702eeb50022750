"""The one JSON reader for everything that comes from outside.

Stricter than ``json.loads`` where outside input can hurt: NaN and Infinity
are refused (Postgres jsonb cannot store them), and absurdly deep nesting is
a ValueError instead of a RecursionError escaping into the daemon. Every
failure is a ValueError whose message says what is wrong.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import orjson


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON (it cannot be stored)")


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON text or UTF-8 bytes; ValueError for anything that is not plain JSON.

    orjson reads what is plainly valid, several times faster; whatever it
    refuses (NaN, lone surrogates, an int past 64 bits, deep nesting, bad
    UTF-8) is read again by stdlib json, so results and error messages are
    exactly json's."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
