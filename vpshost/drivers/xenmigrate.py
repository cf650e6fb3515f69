"""Live migration of Xen domains with ``xl migrate``, in the driver's protocol steps.

``xl migrate`` moves memory, not disks: the guest's disk must be on the target before
the domain resumes there, and it must be the disk *of the instant the domain stopped*.
How that is done here:

- ``prepare`` (target): the guest dir with an empty sparse ``disk.raw`` and the
  domain config rendered with the target's own paths; then a *receiver* process (its
  own session, so it outlives nothing it should not) listening on one TCP port. A
  connection starts with a one-time token and a kind: ``disk`` (block frames written
  into ``disk.raw``, fsync'd before the ack) or ``xl`` (the receiver runs
  ``xl migrate-receive`` and relays the stream). The receiver is also the sentinel:
  if the agent that prepared it dies before the migration ends, it kills the incoming
  ``xl``, destroys the half-received domain and removes the guest dir.
- ``send`` (source): a *pre-copy* of the disk's data extents while the guest runs
  (64 KiB blocks, each block's digest remembered), then ``xl migrate -s "" -C <target
  config> NAME <relay>``. With ``-s ""`` xl runs the relay command as the transport.
  The relay watches the target's answers for xl's "domain received, ready to
  unpause" message: at that moment the source domain is suspended (it can no longer
  write) and the target holds it paused, so the relay holds the message back, sends
  the blocks whose digest changed since the pre-copy (a *final sync*, fsync'd on the
  target), and only then lets the message through. xl then renames, gives the target
  "permission to go", and the target unpauses. If the final sync fails, the relay
  closes the stream instead: xl resumes the domain on the source ("Migration failed,
  resuming at sender") and the target destroys its copy. So the disk on the target is
  exactly the source's disk at suspension, and no failure before "go" leaves the guest
  anywhere but running on the source.
- ``finish`` (target): checks that the domain runs there and drops the helper files.
- ``abort`` (target): kills the receiver (and its ``xl``), destroys any incoming
  domain and removes the guest dir, only if that dir is an incoming one.

Limits: raw disks only (qcow2 goes through QEMU's qdisk cache; move it cold); the final
sync re-reads all data extents while the guest is suspended (fine for small disks; a
dirty bitmap would make it proportional to the writes); no post-copy (xl has none).
The residual window is xl's own: if the connection breaks between "go" and the
target's report, xl says the state is undefined; the control plane then aborts the
target, and the source keeps its disk (the domain, renamed ``NAME--migratedaway``, is
suspended there).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vpshost.errors import Conflict, RuntimeFailure, UsageError
from vpshost.models import Guest

if TYPE_CHECKING:
    from vpshost.drivers.xen import XenDriver

log = logging.getLogger(__name__)
BLOCK = 64 * 1024
XL = "xl"
# xl's handshake messages (tools/xl/xl_migrate.c); the ready message travels with its
# terminating NUL (xl sends and reads sizeof() of it).
READY = b"domain received, ready to unpause\0"
REPORT = b"my copy unpause results are as follows\0"
# files in the guest dir
MARK = "migrate.incoming"  # token; marks a dir prepare made (abort removes only those)
RECEIVER_PID = "migrate.receiver.pid"
RECEIVER_PORT = "migrate.receiver.port"
RECEIVER_LOG = "migrate.receive.log"
BLOCKS = "migrate.blocks.json"  # source: digests of what the pre-copy sent
TARGET_CFG = "migrate.cfg"  # source: the target's domain config, for xl migrate -C
RELAY_INFO = "migrate.relay.json"  # source: the relay's timestamps and errors
HELPERS = (MARK, RECEIVER_PID, RECEIVER_PORT, BLOCKS, TARGET_CFG, RELAY_INFO)
_FRAME = struct.Struct("!cQQ")  # kind, offset (or size / final flag), length
RECEIVER_MAX_WAIT = 3600.0  # seconds a receiver waits for the xl stream to begin


# ---------------------------------------------------------------------- pure pieces

class ReadyGate:
    """Splits the target->source byte stream around xl's ready message (which may
    arrive in pieces), and notes when the target's final report has come through."""

    def __init__(self) -> None:
        self.buf = b""
        self.seen_ready = False
        self.report: int | None = None  # the target's status byte (0: running)
        self._after = b""

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        """Yield ("data", bytes) to forward and ("ready", READY) where it was."""
        if self.seen_ready:
            self._note_report(data)
            yield "data", data
            return
        self.buf += data
        at = self.buf.find(READY)
        if at >= 0:
            self.seen_ready = True
            head, rest = self.buf[:at], self.buf[at + len(READY):]
            self.buf = b""
            if head:
                yield "data", head
            yield "ready", READY
            if rest:
                self._note_report(rest)
                yield "data", rest
            return
        # hold back only what may be the start of the message: xl waits for the
        # banner before it sends anything, so nothing else may be held
        keep = next((k for k in range(min(len(self.buf), len(READY) - 1), 0, -1)
                     if self.buf.endswith(READY[:k])), 0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        if out:
            yield "data", out

    def flush(self) -> bytes:
        out, self.buf = self.buf, b""
        return out

    def _note_report(self, data: bytes) -> None:
        if self.report is not None:
            return
        self._after += data
        at = self._after.find(REPORT)
        if at >= 0 and len(self._after) > at + len(REPORT):
            self.report = self._after[at + len(REPORT)]


def relay_command(python: str, host: str, port: int, token: str, guest_dir: Path) -> str:
    """What ``xl migrate -s ""`` runs as its transport (xl runs it with ``sh -c``)."""
    code = "import sys; from vpshost.drivers.xenmigrate import relay; relay(*sys.argv[1:])"
    return "exec " + shlex.join([python, "-c", code, host, str(port), token, str(guest_dir)])


def xl_migrate_argv(name: str, target_cfg: Path, rune: str) -> list[str]:
    """``-s ""``: xl runs ``rune`` itself as the transport instead of ssh; ``-C``: the
    config the target gets is the one rendered there (its own paths)."""
    return [XL, "migrate", "-s", "", "-C", str(target_cfg), name, rune]


def receive_argv() -> list[str]:
    # no -p: the target unpauses inside xl's handshake, right after "go", so there is
    # no moment when the only copy of the guest sits paused waiting for finish
    return [XL, "migrate-receive"]


def disk_frames(path: Path, known: dict[int, str] | None
                ) -> Iterator[tuple[bytes, int, int, bytes]]:
    """(kind, offset, length, data) frames that make a copy equal to ``path``, given
    the digests ``known`` of what the copy already holds (None: it holds nothing):
    ``S`` size, ``D`` data, ``Z`` zeros. Reads only the file's data extents; all-zero
    blocks the copy lacks are skipped. The last frame, ``H``, carries the digests of
    every data block (for the caller; it is not sent)."""
    size = path.stat().st_size
    yield b"S", size, 0, b""
    sent: dict[int, str] = {}
    with open(path, "rb") as f:
        fd = f.fileno()
        for start, end in data_extents(fd, size):
            off = start - start % BLOCK
            while off < end:
                block = os.pread(fd, BLOCK, off)
                if not block:
                    break
                digest = hashlib.blake2b(block, digest_size=16).hexdigest()
                zero = block.count(0) == len(block)
                prior = (known or {}).get(off)
                if not zero:
                    sent[off] = digest
                if prior != digest and not (zero and prior is None):
                    if zero:
                        yield b"Z", off, len(block), b""
                    else:
                        yield b"D", off, len(block), block
                off += BLOCK
    for off in sorted(set(known or {}) - set(sent)):
        # a block the copy has that is now a hole (discarded): zero it there
        length = min(BLOCK, max(0, size - off))
        if length:
            yield b"Z", off, length, b""
    yield b"H", 0, 0, json.dumps(sent).encode()


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return  # ENXIO: only a hole is left
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


# ---------------------------------------------------------------------- disk transport

def push_disk(path: Path, host: str, port: int, token: str,
              known: dict[int, str] | None, final: bool) -> tuple[dict[int, str], int]:
    """Send what the target's copy lacks; wait until it is on the target's disk.
    Returns the digests of every data block and the bytes sent."""
    sent_bytes = 0
    digests: dict[int, str] = {}
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(f"{token} disk\n".encode())
        for kind, off, length, data in disk_frames(path, known):
            if kind == b"H":
                digests = {int(k): v for k, v in json.loads(data).items()}
                continue
            s.sendall(_FRAME.pack(kind, off, length) + data)
            sent_bytes += len(data)
        s.sendall(_FRAME.pack(b"E", 1 if final else 0, 0))
        answer = _readline(s, 600)
    if answer != b"ok":
        raise RuntimeFailure(f"the target did not take the disk: {answer.decode(errors='replace')}")
    return digests, sent_bytes


def _readline(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf.strip()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the sender closed the disk stream")
        out += chunk
    return bytes(out)


def write_frames(s: socket.socket, disk: BinaryIO) -> bool:
    """The target's side of push_disk; returns the final flag."""
    fd = disk.fileno()
    while True:
        kind, off, length = _FRAME.unpack(_recv_exact(s, _FRAME.size))
        if kind == b"S":
            os.ftruncate(fd, off)
        elif kind == b"D":
            os.pwrite(fd, _recv_exact(s, length), off)
        elif kind == b"Z":
            os.pwrite(fd, bytes(length), off)
        elif kind == b"E":
            os.fsync(fd)
            s.sendall(b"ok\n")
            return bool(off)
        else:
            raise ConnectionError(f"unknown disk frame {kind!r}")


# ---------------------------------------------------------------------- target side

def prepare(drv: XenDriver, guest: Guest, listen_host: str) -> dict[str, Any]:
    from vpshost.drivers import xen as xen_mod
    from vpshost.host import vmimages

    if not listen_host:
        raise UsageError("no address to receive the migration on")
    fmt = str(guest.options.get("disk_format") or "raw")
    if fmt != "raw":
        raise UsageError(f"live moves of Xen guests need a raw disk ('{guest.name}' has "
                         f"{fmt})", "move it cold (without --live)")
    names = xen_mod.xl_list()
    if guest.name in names or f"{guest.name}--incoming" in names or \
            (guest.dir / "xen.json").exists():
        raise Conflict(f"Xen guest '{guest.name}' already exists on this host",
                       "remove the stale copy (`vps delete` on that host) and retry")
    if guest.image in vmimages.BUILTIN:
        vmimages.build(drv.config, guest.image)  # the kernel the config names
    token = secrets.token_hex(16)
    guest.dir.mkdir(parents=True, exist_ok=True)
    (guest.dir / MARK).write_text(token + "\n")
    try:
        (guest.dir / "disk.raw").touch()
        (guest.dir / "xen.json").write_text(json.dumps(
            {"name": guest.name, "image": guest.image, "disk_format": "raw"}) + "\n")
        config = drv.render(guest)
        (guest.dir / "domain.cfg").write_text(config)
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / "agent.sock").unlink()
        port = _start_receiver(guest, listen_host, token)
    except BaseException:
        abort(drv, guest)
        raise
    return {"host": listen_host, "port": port, "token": token, "config": config}


def _start_receiver(guest: Guest, host: str, token: str) -> int:
    code = ("import sys; from vpshost.drivers.xenmigrate import receiver; "
            "receiver(*sys.argv[1:])")
    log_file = open(guest.dir / RECEIVER_LOG, "ab")  # noqa: SIM115 - the child keeps it
    with log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(guest.dir), host, token, str(os.getpid()),
             guest.name], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, env=dict(os.environ))
    (guest.dir / RECEIVER_PID).write_text(str(proc.pid))
    end = time.monotonic() + 30
    port_file = guest.dir / RECEIVER_PORT
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError):
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeFailure("the migration receiver exited at once: " +
                                 (guest.dir / RECEIVER_LOG).read_text(errors="replace")[-500:])
        time.sleep(0.05)
    raise RuntimeFailure("the migration receiver did not start listening within 30s")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def receiver(guest_dir: str, host: str, token: str, agent_pid: str, name: str) -> None:
    """The target's receiving process (see the module text); runs until the incoming
    ``xl migrate-receive`` has ended, or cleans up if the agent dies first."""
    d = Path(guest_dir)
    srv = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host
                               else socket.AF_INET)
    srv.settimeout(0.2)
    tmp = d / (RECEIVER_PORT + ".tmp")
    tmp.write_text(str(srv.getsockname()[1]))
    tmp.rename(d / RECEIVER_PORT)
    state: dict[str, Any] = {"xl": None, "final": False}
    disk = open(d / "disk.raw", "r+b")  # noqa: SIM115 - for the process's life

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            line = _readline(conn, 30).split()
            if len(line) != 2 or not hmac.compare_digest(line[0], token.encode()):
                return
            conn.settimeout(None)
            if line[1] == b"disk":
                with contextlib.suppress(OSError, ConnectionError):
                    state["final"] = write_frames(conn, disk) or state["final"]
            elif line[1] == b"xl" and state["xl"] is None:
                with open(d / RECEIVER_LOG, "ab") as errlog:
                    proc = subprocess.Popen(receive_argv(), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errlog)
                state["xl"] = proc
                _pump(conn, proc)
                state["xl_rc"] = proc.wait()

    # nobody finishes or aborts a migration whose agent died, or that never started
    give_up = time.monotonic() + RECEIVER_MAX_WAIT
    while True:
        proc = state["xl"]
        if proc is not None and "xl_rc" in state:
            break  # the incoming xl is done, whichever way
        if not state["final"] and (not _pid_alive(int(agent_pid)) or (
                proc is None and time.monotonic() > give_up)):
            # nobody will finish or abort this migration: undo it here
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            _destroy_incoming(name, also_named=False)
            shutil.rmtree(d, ignore_errors=True)
            return
        try:
            conn, _addr = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    if state.get("xl_rc"):
        _destroy_incoming(name, also_named=False)
    disk.close()


def _pump(conn: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    """Both directions between the TCP stream and the local xl migrate-receive."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def inbound() -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(1 << 20):
                stdin.write(data)
                stdin.flush()
        with contextlib.suppress(OSError):
            stdin.close()

    t = threading.Thread(target=inbound, daemon=True)
    t.start()
    with contextlib.suppress(OSError):
        while data := os.read(stdout.fileno(), 1 << 16):
            conn.sendall(data)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    t.join(timeout=30)


def _destroy_incoming(name: str, also_named: bool) -> None:
    from vpshost.drivers import xen as xen_mod

    doms = xen_mod.xl_list()
    for dom in (f"{name}--incoming", name) if also_named else (f"{name}--incoming",):
        if dom in doms:
            xen_mod.xl("destroy", dom, timeout=60, check=False)


def _stop_receiver(guest: Guest) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int((guest.dir / RECEIVER_PID).read_text())
        if "xenmigrate" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its own session: the receiver and its xl
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # it is this agent's child: no zombie


def finish(drv: XenDriver, guest: Guest) -> dict[str, Any]:
    from vpshost.drivers import xen as xen_mod

    dom = xen_mod.xl_list().get(guest.name)
    if dom is None:
        raise RuntimeFailure(f"the migrated domain '{guest.name}' is not running here",
                             f"see {guest.dir / RECEIVER_LOG}")
    end = time.monotonic() + 10  # the receiver ends with its xl; give it a moment
    while time.monotonic() < end and _receiver_alive(guest):
        time.sleep(0.1)
    _stop_receiver(guest)
    for f in HELPERS:
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / f).unlink()
    return {}


def _receiver_alive(guest: Guest) -> bool:
    try:
        return _pid_alive(int((guest.dir / RECEIVER_PID).read_text()))
    except (OSError, ValueError):
        return False


def abort(drv: XenDriver, guest: Guest) -> None:
    """Undo prepare. Only a dir prepare made (it has the mark) is removed."""
    if not (guest.dir / MARK).exists():
        return
    _stop_receiver(guest)
    _destroy_incoming(guest.name, also_named=True)
    shutil.rmtree(guest.dir, ignore_errors=True)


# ---------------------------------------------------------------------- source side

def send(drv: XenDriver, guest: Guest, target: dict[str, Any], downtime_ms: int,
         postcopy: bool) -> dict[str, Any]:
    from vpshost.drivers import xen as xen_mod

    if postcopy:
        raise UsageError("Xen live moves have no post-copy", "migrate without --postcopy")
    if guest.name not in xen_mod.xl_list():
        raise Conflict(f"Xen domain '{guest.name}' is not running")
    disk, fmt = drv._disk(guest)
    if fmt != "raw":
        raise UsageError("live moves of Xen guests need a raw disk", "move it cold")
    host, port, token = str(target["host"]), int(target["port"]), str(target["token"])
    for f in (BLOCKS, RELAY_INFO):
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / f).unlink()
    t0 = time.monotonic()
    digests, pre_bytes = push_disk(disk, host, port, token, None, final=False)
    (guest.dir / BLOCKS).write_text(json.dumps({"block": BLOCK, "digests": digests}))
    precopy_s = time.monotonic() - t0
    cfg = guest.dir / TARGET_CFG
    cfg.write_text(str(target["config"]))
    watch = _SuspendWatch(guest.name)
    watch.start()
    t_xl = time.monotonic()
    try:
        res = xen_mod.xl(*xl_migrate_argv(guest.name, cfg,
                                          relay_command(sys.executable, host, port, token,
                                                        guest.dir))[1:],
                         timeout=1800, check=False)
    finally:
        watch.stop()
    xl_s = time.monotonic() - t_xl
    info = _relay_info(guest, wait=5.0 if res.ok else 1.0)
    if not res.ok or "Migration successful" not in res.stderr + res.stdout:
        _recover(guest)
        why = info.get("error") or (res.stderr or res.stdout).strip()[-600:]
        raise RuntimeFailure(f"xl migrate of '{guest.name}' failed: {why}",
                             "the domain keeps running on the source")
    stats: dict[str, Any] = {
        "disk_precopy_ms": round(precopy_s * 1000), "disk_precopy_bytes": pre_bytes,
        "xl_migrate_ms": round(xl_s * 1000),
        "disk_final_sync_ms": round((info.get("synced_at", 0) - info.get("ready_at", 0))
                                    * 1000) if "synced_at" in info else None,
        "disk_final_bytes": info.get("final_bytes"),
        "send_ms": round((time.monotonic() - t0) * 1000)}
    if watch.suspended_at and info.get("reported_at"):
        # all on the source's clock: the domain seen suspended (@releaseDomain) to the
        # target's report that it unpaused it; split at xl's ready message (last memory
        # round and the restore on the target) and after the final disk sync ("go",
        # rename, unpause, report)
        stats["downtime_ms"] = round((info["reported_at"] - watch.suspended_at) * 1000)
        stats["suspend_to_ready_ms"] = round((info["ready_at"] - watch.suspended_at)
                                             * 1000)
        stats["go_to_running_ms"] = round((info["reported_at"] - info["synced_at"]) * 1000)
    return stats


def _relay_info(guest: Guest, wait: float) -> dict[str, Any]:
    """What the relay noted (it may still be writing when xl has returned)."""
    end = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            info: dict[str, Any] = json.loads((guest.dir / RELAY_INFO).read_text())
            if "reported_at" in info or "error" in info or time.monotonic() > end:
                return info
        if time.monotonic() > end:
            return {}
        time.sleep(0.05)


class _SuspendWatch(threading.Thread):
    """Notes when the source domain stops running. xenstored fires ``@releaseDomain``
    when a domain shuts down, suspension included (libxl waits on the same watch), so
    ``xl list`` is asked only then, not polled: dom0 has one vCPU to migrate with."""

    def __init__(self, name: str) -> None:
        super().__init__(daemon=True)
        self.dom_name = name
        self.suspended_at: float | None = None
        self._halt = threading.Event()
        self._proc: subprocess.Popen[str] | None = None

    def _suspended(self) -> bool:
        from vpshost.drivers import xen as xen_mod

        dom = xen_mod.xl_list().get(self.dom_name)
        return dom is None or dom["state"].ljust(6, "-")[3] == "s"

    def run(self) -> None:
        if shutil.which("xenstore-watch"):
            self._proc = subprocess.Popen(["xenstore-watch", "@releaseDomain"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            assert self._proc.stdout is not None
            for _line in self._proc.stdout:
                at = time.time()
                if self._halt.is_set():
                    return
                if self._suspended():
                    self.suspended_at = at
                    return
            return
        while not self._halt.wait(0.5):
            at = time.time()
            if self._suspended():
                self.suspended_at = at
                return

    def stop(self) -> None:
        self._halt.set()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=10)
        self.join(timeout=10)


def _recover(guest: Guest) -> None:
    """After a failed xl migrate: xl resumes the domain itself when it fails before
    "go"; put back the name if it had been renamed, and unpause a paused domain."""
    from vpshost.drivers import xen as xen_mod

    doms = xen_mod.xl_list()
    away = f"{guest.name}--migratedaway"
    if away in doms and guest.name not in doms:
        xen_mod.xl("rename", away, guest.name, timeout=30, check=False)
        doms = xen_mod.xl_list()
    dom = doms.get(guest.name)
    if dom is not None and dom["state"].ljust(6, "-")[2] == "p":
        xen_mod.xl("unpause", guest.name, timeout=30, check=False)
    for f in (BLOCKS, TARGET_CFG, RELAY_INFO):
        with contextlib.suppress(FileNotFoundError):
            (guest.dir / f).unlink()


def relay(host: str, port: str, token: str, guest_dir: str) -> None:
    """xl's transport on the source (stdin: xl's stream out; stdout: the target's
    answers back to xl), with the final disk sync at the ready message."""
    d = Path(guest_dir)
    info: dict[str, Any] = {"started_at": time.time()}

    def save() -> None:
        tmp = d / (RELAY_INFO + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(d / RELAY_INFO)

    try:
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.settimeout(None)
        sock.sendall(f"{token} xl\n".encode())
    except OSError as exc:
        info["error"] = f"cannot reach the target's receiver: {exc}"
        save()
        sys.exit(1)

    def outbound() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(0, 1 << 20):
                sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=outbound, daemon=True).start()
    gate = ReadyGate()
    while True:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            break
        for kind, chunk in gate.feed(data):
            if kind == "ready":
                info["ready_at"] = time.time()
                try:
                    blocks = json.loads((d / BLOCKS).read_text())
                    known = {int(k): v for k, v in blocks["digests"].items()}
                    disk = d / "disk.raw"
                    _digests, info["final_bytes"] = push_disk(disk, host, int(port), token,
                                                              known, final=True)
                except Exception as exc:  # noqa: BLE001 - any failure: no "go"
                    info["error"] = f"final disk sync failed: {exc}"
                    save()
                    os._exit(1)  # closing the stream makes xl resume at the sender
                info["synced_at"] = time.time()
            with contextlib.suppress(OSError):  # xl gone: nothing left to tell it
                _write_all(1, chunk)
        if gate.report is not None and "reported_at" not in info:
            info["reported_at"] = time.time()
            info["report"] = gate.report
            save()  # xl exits right after reading the report: send reads this then
    with contextlib.suppress(OSError):
        _write_all(1, gate.flush())
    save()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
