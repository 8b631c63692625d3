"""Text people choose and others see (names of devices, clusters and keys; what an agent reports about its
host): normalised, and refused when it holds a character that hides, reorders or breaks what is shown.

A right-to-left override makes ``rig<U+202E>exe.txt`` read as ``rigtxt.exe``; zero-width characters make two
names that look alike differ; control characters (NUL, escapes, line breaks) break logs, terminals and CSV
files. None of them belongs in a name, so they are refused, not silently removed: the caller learns which.
"""

from __future__ import annotations

import unicodedata

from portal.services.errors import InvalidInput

# Control (Cc), format (Cf: the bidirectional controls U+200E, U+200F, U+061C, U+202A-U+202E, U+2066-U+2069,
# zero-width characters, the byte order mark, soft hyphen), lone surrogates (Cs), and the line and
# paragraph separators (Zl, Zp).
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def why_refused(text: str) -> str | None:
    """Why ``text`` cannot be shown to others, naming its first refused character; None when it can."""
    for char in text:
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            found = f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()
            return (
                f"must not contain control, bidirectional or invisible formatting characters (found {found})"
            )
    return None


def tidy(text: str) -> str:
    """``text`` in Unicode NFC, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", text).strip()


def shown_text(text: str, *, field: str) -> str:
    """``text`` tidied; InvalidInput naming ``field`` when it holds a refused character."""
    text = tidy(text)
    why = why_refused(text)
    if why is not None:
        raise InvalidInput(f"{field} {why}.", details={"field": field})
    return text
