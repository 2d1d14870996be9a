"""The console's languages: one JSON catalogue per language (``locales/<lang>.json``).

Simplified Chinese is the default (Wuxi's staff read it), English the other; the choice is
kept in the ``lang`` cookie. Districts and site types are translated by their stored names
(``district.Liangxi``, ``site_type.subway_station``); a name without an entry is shown as it
is stored.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Final

LANGUAGES: Final = ("zh", "en")
DEFAULT: Final = "zh"
COOKIE: Final = "lang"
_DIR: Final = Path(__file__).resolve().parent / "locales"


@cache
def catalogue(lang: str) -> dict[str, str]:
    """Key → text for ``lang`` (one of :data:`LANGUAGES`)."""
    if lang not in LANGUAGES:
        raise ValueError(f"no catalogue for {lang!r}; known: {', '.join(LANGUAGES)}")
    data = json.loads((_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"locales/{lang}.json must map keys to strings")
    return data


def chosen(cookie: str | None) -> str:
    """The language a request asked for by its cookie; the default for anything else."""
    return cookie if cookie in LANGUAGES else DEFAULT


class Translator:
    """``t(key)`` in one language; ``name(kind, value)`` for stored names."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.texts = catalogue(lang)

    def __call__(self, key: str, **values: object) -> str:
        text = self.texts.get(key, key)
        return text.format(**values) if values else text

    def name(self, kind: str, value: str | None) -> str:
        """A district, site type, status, device state …, as stored → as shown."""
        if value is None:
            return "—"
        return self.texts.get(f"{kind}.{value}", value)

    def device(self, slot: str | None) -> str:
        """A device slot (``printer``, ``printer_2``) → its kind's name, and its number."""
        if slot is None:
            return "—"
        kind, _, number = slot.rpartition("_")
        if kind and number.isdigit():
            return f"{self.name('device', kind)} {number}"
        return self.name("device", slot)
