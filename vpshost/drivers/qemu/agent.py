"""Talking to the agent inside the guest over its virtio-serial port.

Two protocols share one interface: ``tiny`` (the busybox agent of the tiny image, one
line per request and reply, payloads in base64; see docs/vm.md) and ``qga``
(qemu-guest-agent's JSON, used by debian-12 and imported images).
Both are reached through a unix socket QEMU serves; the guest side may not be
listening yet (early boot), so every request carries an id and stale replies are
skipped.
"""

from __future__ import annotations

import base64
import json
import random
import shlex
import socket
import time
from pathlib import Path
from typing import Any

from vpshost.drivers.base import ExecResult
from vpshost.errors import RuntimeFailure, UsageError


class AgentError(RuntimeFailure):
    """The guest agent did not answer in time or answered nonsense."""


class _Line:
    """A line-oriented unix socket client with an overall deadline."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.deadline = deadline
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buf = b""
        try:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise AgentError(f"cannot reach the guest agent socket {path}: {exc}") from None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AgentError("the guest agent socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def close(self) -> None:
        self.sock.close()


class Agent:
    kind = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ping(self, timeout: float = 2.0) -> bool:
        raise NotImplementedError

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        """Ping until the agent answers or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.ping(min(2.0, max(0.2, end - time.monotonic()))):
                    return True
            except AgentError:
                time.sleep(0.2)
        return False


def _b64(field: bytes) -> str:
    return base64.b64decode(field[1:]).decode(errors="replace") if len(field) > 1 else ""


class TinyAgent(Agent):
    kind = "tiny"

    def _call(self, verb: str, arg: str, timeout: float,
              slack: float = 3.0) -> tuple[int, str, str]:
        """``timeout`` bounds the command inside; ``slack`` covers the round trip. A
        request sent before the guest opened its port is discarded by the guest
        kernel, so pings use no slack and are simply repeated."""
        rid = f"{random.getrandbits(48):x}"
        guest_timeout = max(1, int(timeout))
        payload = base64.b64encode(arg.encode()).decode() or "-"
        conn = _Line(self.path, time.monotonic() + timeout + slack)
        try:
            conn.send(f"{rid} {verb} {guest_timeout} {payload}\n".encode())
            while True:
                try:
                    parts = conn.readline().split(b" ")
                except TimeoutError:
                    raise AgentError(f"the guest agent did not answer '{verb}' within "
                                     f"{timeout:.0f}s") from None
                if len(parts) == 4 and parts[0].decode(errors="replace") == rid:
                    return int(parts[1]), _b64(parts[2]), _b64(parts[3])
        finally:
            conn.close()

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            return self._call("ping", "", min(timeout, 0.5), slack=0)[0] == 0
        except AgentError:
            return False

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        rc, out, err = self._call("exec", shlex.join(argv), timeout)
        if rc == 124 and not out and not err:
            err = f"timed out after {timeout:.0f}s"
        return ExecResult(rc, out, err)

    def shutdown(self) -> None:
        self._call("poweroff", "", 5.0)


class QgaAgent(Agent):
    kind = "qga"

    def _session(self, timeout: float) -> _Line:
        """Connect and resynchronise (guest-sync-delimited), as qemu-ga requires."""
        conn = _Line(self.path, time.monotonic() + timeout)
        sync_id = random.getrandbits(31)
        conn.send(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                        "arguments": {"id": sync_id}}).encode() + b"\n")
        try:
            while True:
                line = conn.readline().lstrip(b"\xff").strip()
                if not line:
                    continue
                try:
                    if json.loads(line).get("return") == sync_id:
                        return conn
                except ValueError:
                    continue
        except TimeoutError:
            conn.close()
            raise AgentError("qemu-guest-agent did not answer (is it installed and "
                             "running in the guest?)") from None

    def _cmd(self, conn: _Line, name: str, args: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        conn.send(json.dumps(msg).encode() + b"\n")
        try:
            while True:
                line = conn.readline().lstrip(b"\xff").strip()
                if not line:
                    continue
                reply = json.loads(line)
                if "error" in reply:
                    raise AgentError(f"guest agent refused {name}: "
                                     f"{reply['error'].get('desc')}")
                if "return" in reply:
                    return reply["return"]
        except TimeoutError:
            raise AgentError(f"guest agent did not answer {name} in time") from None

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            conn = self._session(timeout)
        except AgentError:
            return False
        conn.close()
        return True

    def exec(self, argv: list[str], timeout: float) -> ExecResult:
        if not argv:
            raise UsageError("nothing to execute")
        conn = self._session(min(timeout, 10.0) + 5)
        conn.deadline = time.monotonic() + timeout + 5
        try:
            started = self._cmd(conn, "guest-exec", {"path": argv[0], "arg": argv[1:],
                                                      "capture-output": True})
            pid = started["pid"]
            end = time.monotonic() + timeout
            delay = 0.05
            while True:
                st = self._cmd(conn, "guest-exec-status", {"pid": pid})
                if st.get("exited"):
                    break
                if time.monotonic() > end:
                    return ExecResult(124, "", f"timed out after {timeout:.0f}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        finally:
            conn.close()
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
        rc = st.get("exitcode", 128 + int(st.get("signal", 0)))
        return ExecResult(int(rc), out, err)

    def shutdown(self) -> None:
        conn = self._session(5.0)
        try:
            # guest-shutdown sends no reply on success: fire and forget
            conn.send(json.dumps({"execute": "guest-shutdown",
                                  "arguments": {"mode": "powerdown"}}).encode() + b"\n")
        finally:
            conn.close()


def for_image(kind: str, path: Path) -> Agent | None:
    if kind == "tiny":
        return TinyAgent(path)
    if kind == "qga":
        return QgaAgent(path)
    return None
