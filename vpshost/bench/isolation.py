"""Isolation after Matthews et al. 2007: a well-behaved guest serves HTTP at a fixed rate
while a neighbour of the same type and plan runs one stressor at a time.

The good guest runs busybox httpd; the host requests a 4 KiB page at a fixed rate and
records each response time (a request that fails or takes over 2 s counts as failed).
Degradation is the good guest's mean response time under the stressor against its
baseline, in percent; failed requests are reported beside it. After each stressor the
neighbour is asked to `echo`: "survived" means it still answered. Both guests have a
process limit (the plan's max_procs), as a VPS host would set; a wrecked neighbour is
restarted before the next stressor.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vpshost.bench.guests import BenchEnv, Place

HTTP_PORT = 8080
SINK_PORT = 5301
RECV_PORT = 5302


def stressors(plan_mb: int, seconds: int, host_ip: str, scratch: str) -> dict[str, str]:
    d = seconds
    return {
        "cpu": f"for i in 1 2; do timeout {d} sh -c 'while :; do :; done' & done; wait",
        "memory": f"timeout {d} sh -c 'x=$(dd if=/dev/zero bs=1M count={plan_mb * 3 // 2} "
                  f"2>/dev/null | tr \"\\0\" a); sleep {d}'; true",
        "fork-bomb": f"timeout {d} sh -c 'f(){{ f|f & }}; f; sleep {d}' >/dev/null 2>&1; "
                     "true",
        "disk": f"timeout {d} sh -c 'while :; do dd if=/dev/zero of={scratch}/stress bs=1M "
                f"count=32 oflag=direct 2>/dev/null; done'; rm -f {scratch}/stress; true",
        "net-send": f"timeout {d} sh -c 'cat /dev/zero | nc {host_ip} {SINK_PORT}'; true",
        "net-receive": f"timeout {d + 2} sh -c 'sleep {d + 2} | nc -l -p {RECV_PORT} "
                       ">/dev/null'; true",
    }


def _get(ip: str) -> float | None:
    """One HTTP GET; its seconds, or None when it failed or took over 2 s."""
    t0 = time.monotonic()
    try:
        with socket.create_connection((ip, HTTP_PORT), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        ok = data.startswith(b"HTTP/1.") and b" 200 " in data[:20] and len(data) > 4096
    except OSError:
        return None
    took = time.monotonic() - t0
    return took if ok and took <= 2 else None


def load(ip: str, rate: float, seconds: float) -> dict[str, float]:
    """Requests at a fixed rate (open loop: a slow answer does not slow the schedule)."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        futs = []
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futs.append(pool.submit(_get, ip))
        res = [f.result() for f in futs]
    ok = [r for r in res if r is not None]
    return {"requests": n, "failed": n - len(ok),
            "mean_ms": statistics.mean(ok) * 1000 if ok else float("nan"),
            "p95_ms": (sorted(ok)[int(len(ok) * 0.95) - 1] * 1000) if ok else float("nan")}


class _Sink:
    """Accepts connections on the host and discards what arrives (net-send target)."""

    def __init__(self, ip: str, port: int) -> None:
        self.srv = socket.create_server((ip, port), reuse_port=True)
        self.srv.settimeout(0.5)
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    def _drain(self, c: socket.socket) -> None:
        c.settimeout(1)
        while not self.stop.is_set():
            try:
                if not c.recv(1 << 16):
                    break
            except OSError:
                if self.stop.is_set():
                    break
        c.close()

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


def _blast(ip: str, seconds: float) -> None:
    """Send to the neighbour's nc for ``seconds`` (net-receive)."""
    end = time.monotonic() + seconds
    chunk = b"\0" * 65536
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, RECV_PORT), timeout=2) as s:
                s.settimeout(2)
                while time.monotonic() < end:
                    s.sendall(chunk)
            return
        except OSError:
            time.sleep(0.2)


def run_type(env: BenchEnv, good: Place, bad: Place, gateway: str, q: dict[str, Any],
             progress: Any) -> dict[str, Any]:
    page = "a" * 4096
    start_httpd = (f"mkdir -p /www && printf '{page}' > /www/index.html && "
                   f"setsid httpd -p {HTTP_PORT} -h /www </dev/null >/dev/null 2>&1 &")
    rc, out = env.sh(good, start_httpd)
    if rc != 0:
        raise RuntimeError(f"httpd did not start in {good.name}: {out}")
    time.sleep(0.5)
    seconds, rate = q["seconds"], q["rate"]
    base = load(good.ip, rate, seconds)
    result: dict[str, Any] = {"baseline": base, "stressors": {}}
    sink = _Sink(gateway, SINK_PORT)
    try:
        for name, script in stressors(q["plan_mb"], seconds, gateway, bad.scratch).items():
            progress(f"isolation: {good.kind}, neighbour runs {name}")
            # quiet, and reap what timeout(1) leaves (it kills the shell, not its pipes)
            wrapped = (f"({script}) </dev/null >/dev/null 2>&1; "
                       "killall -9 nc cat dd tr 2>/dev/null; true")
            t = threading.Thread(target=env.sh, args=(bad, wrapped, seconds + 60),
                                 daemon=True)
            t.start()
            if name == "net-receive":
                time.sleep(1)
                threading.Thread(target=_blast, args=(bad.ip, seconds), daemon=True).start()
            else:
                time.sleep(0.5)
            under = load(good.ip, rate, seconds)
            t.join(seconds + 90)
            survived = env.alive(bad)
            good_ok = _get(good.ip) is not None or _get(good.ip) is not None
            mean_b, mean_s = base["mean_ms"], under["mean_ms"]
            result["stressors"][name] = {
                **under, "survived": survived, "good_serving_after": good_ok,
                "degradation_pct": round((mean_s / mean_b - 1) * 100, 1)
                if mean_b == mean_b and mean_s == mean_s else None,
            }
            if not survived or name in ("fork-bomb", "memory"):
                env.restart(bad)
            if not good_ok:  # note it, and give the next stressor a serving guest
                env.restart(good)
                env.sh(good, start_httpd)
                time.sleep(0.5)
    finally:
        sink.close()
    return result
