"""User-facing errors: each carries one located message per problem and maps to exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in user input: where it is (``file:line:col`` or a label) and what is wrong."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        head = f"{_printable(self.where)}: " if self.where else ""
        field = f"{_printable(self.path)}: " if self.path else ""
        return f"{head}{field}{_printable(self.message)}"


def _printable(text: str) -> str:
    """One line per problem: control characters from user input are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


printable = _printable


class HepcError(Exception):
    """Any failure the user can act on. The CLI prints each problem on one line and exits 2."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SpecError(HepcError):
    """The spec (or an override) is malformed or inconsistent."""


class StoreError(HepcError):
    """The store is unreadable, corrupted or locked in a way the user must resolve."""


class StepFailed(HepcError):
    """A step body raised; finished steps stay committed."""


def data_cause(e: BaseException) -> tuple[str, str] | None:
    """(field, message) of the data problem behind a failed step (a DataError naming a spec field), so
    that a worker process can send it to the driver, which locates it in the spec (None: not one)."""
    cause = e.__cause__
    field, message = getattr(cause, "field", None), getattr(cause, "message", None)
    return (field, message) if isinstance(field, str) and isinstance(message, str) else None
