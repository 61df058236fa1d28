"""User-facing errors.

A `UserError` is a mistake the user can fix (bad file, bad option, missing extra). The CLI turns
it into one line on stderr and exit code 2, never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

    exit_code = 2


class MissingExtraError(UserError):
    """An optional dependency group is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'econlm[{extra}]'"
        )
