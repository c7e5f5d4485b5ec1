"""Errors meant for the person running preftune, not for a debugger.

A `UserError` carries one sentence that says what is wrong, where (row, field or
flag) and what to do. The CLI prints it without a traceback and exits non-zero;
anything else is a bug and raises normally.
"""


class UserError(Exception):
    """Something the user can fix: a flag, a file, a row."""


class ConfigError(UserError, ValueError):
    """An invalid setting or combination of settings."""


class DataError(UserError, ValueError):
    """A row or file that cannot be turned into a preference pair."""
