"""QMP through the `qemu.qmp` library, in short synchronous calls.

Each call opens the VM's QMP socket, runs its commands and closes it again, so the
driver keeps no connection (and no state) between operations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from vpshost.errors import RuntimeFailure

T = TypeVar("T")


class MonitorError(RuntimeFailure):
    """QMP was unreachable or refused a command."""


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from a thread that already runs an event loop (the API)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _session(sock: Path, cmds: list[tuple[str, dict[str, Any] | None]],
                   timeout: float) -> list[Any]:
    qmp = QMPClient("vpshost")
    try:
        await asyncio.wait_for(qmp.connect(str(sock)), timeout)
        out = []
        for name, args in cmds:
            out.append(await asyncio.wait_for(qmp.execute(name, args), timeout))
        return out
    finally:
        await qmp.disconnect()


def qmp_many(sock: Path, cmds: list[tuple[str, dict[str, Any] | None]],
             timeout: float = 30.0) -> list[Any]:
    """Run QMP commands in one session; raise MonitorError on any failure."""
    try:
        return _run_sync(_session(sock, cmds, timeout))
    except ExecuteError as exc:
        raise MonitorError(f"QEMU refused {exc.sent.get('execute')}: {exc.error.error.desc}") \
            from None
    except (QMPError, OSError, TimeoutError, EOFError) as exc:  # EOF: e.g. after `quit`
        raise MonitorError(f"cannot talk to QEMU over {sock}: {exc or type(exc).__name__}") \
            from None


def qmp(sock: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    return qmp_many(sock, [(cmd, args or None)], timeout)[0]


def hmp(sock: Path, command_line: str, timeout: float = 300.0) -> str:
    """A human-monitor command (savevm/loadvm/delvm have no stable QMP form in 7.2).

    HMP reports errors as text, so any output from these commands means failure.
    """
    out = qmp(sock, "human-monitor-command", timeout=timeout, **{"command-line": command_line})
    return str(out or "").strip()
