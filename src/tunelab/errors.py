"""User-facing errors.

Anything a user can cause (a bad config key, a malformed data row, a missing asset) raises
`TunelabError` with a message that names the file, line, key or field and says what is expected.
The CLI prints these messages without a traceback; `assert` is kept for internal invariants.
"""


class TunelabError(Exception):
    """An error caused by user input; its message is shown as-is, without a traceback."""
