"""Prompt templates: ``{slot}`` placeholders that a brief's creative variants fill.

``{{`` and ``}}`` are literal braces. A placeholder is a bare name (letters, digits, ``_``);
no attribute access, indexing, conversion or format spec, so filling a template can only
ever insert the slot's text.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

SLOT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FORMATTER = string.Formatter()
_LITERAL_BRACES_HINT = "write {{ or }} for a literal brace"


def _parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, slot name or None) pieces of ``template``; ValueError when it is malformed."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template ({exc}); {_LITERAL_BRACES_HINT}") from None
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not SLOT_NAME.match(name) or spec or conversion):
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"malformed placeholder {written!r}: a placeholder is {{name}} with letters, digits and _ "
                f"(not starting with a digit); {_LITERAL_BRACES_HINT}"
            )
        parts.append((literal, name))
    return parts


def template_slots(template: str) -> list[str]:
    """The slot names ``template`` uses, in order of first use; ValueError when it is malformed."""
    return list(dict.fromkeys(name for _, name in _parts(template) if name is not None))


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every placeholder replaced by its value and ``{{``/``}}`` made single.

    Raises KeyError naming the first placeholder without a value.
    """
    return "".join(literal + (values[name] if name is not None else "") for literal, name in _parts(template))
