"""The one exception type for user mistakes.

Library code raises :class:`UserError` for missing files, mismatched inputs, bad values and the
like, in the library's own words: the message begins with the config field it concerns (or the
file) and says what was expected and what was found, e.g. ``activations_dir runs/x: not a store``
with ``field="activations_dir"``. The command layer (``saevlm.cli``), the one place that knows
both fields and flags, names the field by its flag (``--activations_dir runs/x: not a store``),
prints the line and exits with status 2, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message names the field or file, what was expected and
    what was found. ``field``: the config field the bad value came from, when known."""

    def __init__(self, message: str = "", field: str | None = None, mentions: tuple[str, ...] = ()):
        super().__init__(message)
        self.field = field
        self.mentions = tuple(m for m in mentions if m)  # other fields the message names

    def with_flags(self, flag_of) -> str:
        """The message as the command line says it: the leading field and the fields it mentions
        named by their flags (``flag_of(field)``: the flag, or None to keep the field's name)."""
        import re

        text = str(self)
        # The leading field, given or not: a message that begins with one of the command's fields
        # names it by its flag, so every refusal spells a flag one way (--activations_dir).
        lead = self.field or (m.group(0) if (m := re.match(r"[a-z][a-z0-9_]*(?=[ :]|$)", text)) else None)
        if lead and re.match(rf"{re.escape(lead)}(?=[ :]|$)", text) and flag_of(lead):
            text = flag_of(lead) + text[len(lead):]
        for name in self.mentions:
            flag = flag_of(name)
            if flag:
                text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w])", flag, text)
        return text
