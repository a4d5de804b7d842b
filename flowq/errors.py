"""flowq's exceptions.

FlowqError
 ├── ValidationError       a definition, vars or request is invalid (``problems`` lists each one)
 ├── InvalidTransition     a state change the state machine forbids (names the current state)
 ├── NotFound              an unknown workflow, version or execution
 ├── Conflict              a definition id@version already stored with another body
 ├── TaskError             raised inside a task: the attempt failed and may be retried
 │    └── PermanentError   raised inside a task: fail at once, never retry
 └── WaitTimeout           waiting for an execution took longer than asked
"""

from __future__ import annotations

from collections.abc import Sequence


class FlowqError(Exception):
    """Root of every error flowq raises on purpose."""


class ValidationError(FlowqError):
    """A definition, vars or a request is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid")


class InvalidTransition(FlowqError):
    """A state change that the state machine does not allow from the current state."""

    def __init__(self, kind: str, ident: str, current: str, wanted: str, action: str = "") -> None:
        self.kind, self.ident, self.current, self.wanted = kind, ident, current, wanted
        what = action or f"move to {wanted!r}"
        super().__init__(f"cannot {what}: {kind} {ident} is {current!r}")


class NotFound(FlowqError):
    """An unknown workflow, version or execution."""


class Conflict(FlowqError):
    """A definition id@version is already stored with a different body."""


class TaskError(FlowqError):
    """A task attempt failed; retried while attempts remain."""


class PermanentError(TaskError):
    """A task attempt failed in a way that retrying cannot fix: fail at once."""


class WaitTimeout(FlowqError):
    """An execution did not end within the time a caller waited for it."""


class UsageError(FlowqError):
    """Bad command-line input: exit code 2."""


# The `flowq` command's exit codes (SPEC section 3)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
