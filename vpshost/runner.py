"""The one way vpshost runs external programs: argv lists, a timeout, output kept."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

from vpshost.errors import CommandError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run(argv: list[str], *, timeout: float = 60.0, check: bool = True,
        input: str | bytes | None = None, env: dict[str, str] | None = None,
        cwd: str | None = None) -> Result:
    """Run ``argv`` (never through a shell) and return its result.

    Raises CommandError when it exits non-zero (unless ``check`` is false) or times out.
    """
    log.debug("run %s", argv)
    text_input = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=text_input, env=env, cwd=cwd,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise CommandError(argv, None, out, err, timeout=timeout) from None
    except FileNotFoundError:
        raise CommandError(argv, 127, "", f"{argv[0]}: program not found; "
                           "run `make demo` or install it") from None
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return result
