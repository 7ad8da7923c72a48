"""Errors that reach the user as one clear message, without a traceback."""


class UserError(Exception):
    """Bad input. The message names the problem and the fix; `exit_code` is the process's."""

    exit_code = 1


class ConfigError(UserError):
    """A bad config file, key, value or command-line flag."""

    exit_code = 2


class DataError(UserError):
    """A dataset that is missing, incomplete or corrupted: `problem`, then how to fix it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem} {fix}".strip())
        self.problem = problem


def one_line(error: BaseException) -> str:
    """`Type: message` of an exception and of each exception behind it (its __cause__, or the
    __context__ it was raised in), joined on one line: a library's multi-line message (one line
    per mirror tried, say) and the low-level reason it wraps are kept whole."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        message = " ".join(str(error).split())
        parts.append(f"{type(error).__name__}: {message}" if message else type(error).__name__)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return " <- ".join(parts)
