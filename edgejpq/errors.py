"""The one exception type a user can cause.

The CLI prints an EdgejpqError as a single line (no traceback); its message must name the
thing at fault (file, key, layer, byte offset) and, where possible, what to do about it.
"""


class EdgejpqError(Exception):
    """A problem with the user's input (file, model, option), reported without a traceback."""
