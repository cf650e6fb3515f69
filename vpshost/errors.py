"""The exception types every layer raises.

User mistakes (``UsageError`` and its children) become CLI exit code 2 and HTTP 4xx;
everything else that goes wrong at run time (``RuntimeFailure``) becomes exit code 1
and HTTP 5xx. Each carries a message saying what was wrong and a hint saying what to do.
"""

from __future__ import annotations


class VpsError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` what to do about it."""

    http_status = 500
    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(VpsError):
    """The request itself is wrong: bad name, bad size, impossible plan."""

    http_status = 400
    exit_code = 2


class NotFound(UsageError):
    http_status = 404


class Conflict(UsageError):
    """The request fits the syntax but not the current state (duplicate, wrong state)."""

    http_status = 409


class Unauthorized(UsageError):
    http_status = 401


class Forbidden(UsageError):
    """Known caller, but the operation is for administrators."""

    http_status = 403


class Unsupported(UsageError):
    """A guest type lacks a capability (for example container snapshots of memory)."""

    http_status = 501

    def __init__(self, guest_type: str, capability: str, hint: str = "") -> None:
        super().__init__(f"guest type '{guest_type}' does not support {capability}", hint)


class RuntimeFailure(VpsError):
    """Something outside the user's control failed (a tool, the kernel, the disk)."""


class CommandError(RuntimeFailure):
    """An external program failed; carries the command and what it printed."""

    def __init__(self, argv: list[str], returncode: int | None, stdout: str, stderr: str,
                 timeout: float | None = None) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        cmd = " ".join(argv)
        if returncode is None:
            msg = f"command timed out after {timeout:.0f}s: {cmd}"
        else:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-5:]
            msg = f"command failed with exit code {returncode}: {cmd}"
            if tail:
                msg += "\n  " + "\n  ".join(tail)
        super().__init__(msg)
