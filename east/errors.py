"""User-facing errors: one line, no traceback, printed by the CLI."""


class EastError(Exception):
    """An error the user can fix (bad params row, missing dataset, corrupt checkpoint).

    The message is a single line; the CLI prints it as ``east: error: <message>`` and
    exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
