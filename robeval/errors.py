"""User-facing errors: one line that says what is wrong and how to fix it."""


class RobevalError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without traceback."""


class UnknownNameError(RobevalError, KeyError):
    """A name that no registry knows (activation, model, dataset, attack, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PeerError(RobevalError):
    """An error raised on rank 0 of a distributed job and re-raised on the other ranks.

    Rank 0 prints it; the other ranks exit quietly so the message appears once.
    """


def first_line(err: BaseException, empty: str | None = None) -> str:
    """The first non-empty line of an exception's message, stripped, for one-line errors.

    A message without any text gives `empty`, by default the exception's type name.
    """
    lines = (line.strip() for line in str(err).splitlines())
    return next((line for line in lines if line), empty or type(err).__name__)


def short_repr(value: object, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters for a one-line message; an int too long for repr
    (past 4300 digits Python refuses) is described by its size instead."""
    try:
        text = repr(value)
    except ValueError:
        digits = int(value.bit_length() * 0.30103) + 1 if isinstance(value, int) else 0
        text = f"<a number of about {digits} digits>" if digits else f"<a {type(value).__name__}>"
    text = " ".join(text.splitlines())
    return text if len(text) <= limit else text[:limit - 3] + "..."
