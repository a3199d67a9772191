"""The one exception type for user mistakes.

Commands raise :class:`UserError` for bad flags, missing files, mismatched inputs and the like;
``saevlm.cli`` prints its message and exits with status 2, never a traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message names the flag or file, what was expected and
    what was found."""
