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
