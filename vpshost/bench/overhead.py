"""Overhead: the same fixed jobs natively and inside one guest of each type.

CPU: md5sum of N MiB of zeros (busybox). Memory bandwidth: dd /dev/zero -> /dev/null
in 1 MiB blocks (kernel page clearing and copying). Disk: dd with O_DIRECT, sequential
1 MiB writes and reads and 4 KiB writes, on the guest's own root (container: its
loop-mounted ext4; vm: its virtio disk, a qcow2 overlay) and fio (random 4K, sequential
1M, direct, libaio) where fio can run: natively and for containers (the host's fio,
placed in the container's cgroups, on the container's filesystem through
/proc/<init>/root; the tiny VM has no fio). Network: TCP throughput host -> guest
(a Python sender, busybox nc in the guest) and ICMP round trip (ping); native uses
loopback, the best the host can do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from vpshost.bench.guests import BenchEnv, Place

NC_PORT = 5201
DISK_CAP_MIB = 96  # the bench plans' smallest disk is 256 MiB


def cpu_job(mib: int) -> str:
    return f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null | md5sum >/dev/null"


def mem_job(mib: int) -> str:
    return f"dd if=/dev/zero of=/dev/null bs=1M count={mib} 2>/dev/null"


def _median(env: BenchEnv, p: Place, job: str, reps: int) -> float:
    return statistics.median(env.timed(p, job) for _ in range(reps))


def _rate(env: BenchEnv, p: Place, make: Any, size: int, reps: int, target_s: float,
          cap: int = 1 << 40) -> tuple[float, int]:
    """Units per second of ``make(size)``, growing the size until one run lasts about
    ``target_s`` (the guest clock ticks in 10 ms, and a TCG guest is 10-300x slower
    than native, so one fixed size cannot suit every type); never beyond ``cap`` (disk
    jobs must fit the guest's disk). Returns (rate, size used)."""
    for _ in range(6):
        t = env.timed(p, make(size))
        if t >= target_s / 2:
            break
        if size >= cap:
            break
        size = min(cap, int(size * min(16.0, target_s / max(t, 0.01))))
    best = statistics.median([t, *(env.timed(p, make(size)) for _ in range(reps - 1))])
    return size / best, size


def disk(env: BenchEnv, p: Place, mib: int, reps: int, target_s: float
         ) -> dict[str, float]:
    f = f"{p.scratch}/bench.dat"
    w, _ = _rate(env, p, lambda n: f"dd if=/dev/zero of={f} bs=1M count={n} oflag=direct "
                 "conv=fsync 2>/dev/null", mib, reps, target_s, cap=DISK_CAP_MIB)
    r = _median(env, p, f"dd if={f} of=/dev/null bs=1M iflag=direct 2>/dev/null", reps)
    size = int(env.sh(p, f"wc -c < {f}")[1].split()[0]) // 2**20
    w4, _ = _rate(env, p, lambda n: f"dd if=/dev/zero of={f}.4k bs=4k count={n} "
                  "oflag=direct 2>/dev/null", mib * 16, reps, target_s,
                  cap=DISK_CAP_MIB * 256)
    env.sh(p, f"rm -f {f} {f}.4k")
    return {"seq_write_mbps": w, "seq_read_mbps": size / r, "write_4k_iops": w4}


def _fio_cmd(target: str, size_mb: int, runtime: int) -> list[str]:
    common = ["--direct=1", "--ioengine=libaio", f"--size={size_mb}M",
              f"--runtime={runtime}", "--time_based", "--output-format=json",
              f"--filename={target}", "--group_reporting"]
    return ["fio", "--name=rand4k", "--rw=randrw", "--bs=4k", "--iodepth=16", *common,
            "--name=seq1m", "--stonewall", "--rw=read", "--bs=1M", "--iodepth=4", *common]


def fio(env: BenchEnv, p: Place, size_mb: int, runtime: int) -> dict[str, float] | None:
    """fio on the host, in the container's cgroups when ``p`` is a container."""
    if not shutil.which("fio") or p.kind == "vm":
        return None
    if p.kind == "native":
        target = f"{p.scratch}/fio.dat"
        procs: list[Path] = []
    else:
        pid = env.init_pid(p)
        if pid is None:
            return None
        target = f"/proc/{pid}/root{p.scratch}/fio.dat"
        from vpshost.metrics import cgroup_paths

        procs = [d / "cgroup.procs" for c, d in cgroup_paths(pid, top_only=True).items()
                 if c in ("blkio", "memory", "cpu", "cpuacct", "unified", "io")]

    def enter() -> None:
        for f in procs:
            with contextlib.suppress(OSError):
                f.write_text(str(os.getpid()))

    r = subprocess.run(_fio_cmd(target, size_mb, runtime), capture_output=True, text=True,
                       preexec_fn=enter, timeout=runtime * 4 + 120)
    Path(target).unlink(missing_ok=True)
    if r.returncode != 0:
        return None
    jobs = {j["jobname"]: j for j in json.loads(r.stdout[r.stdout.index("{"):])["jobs"]}
    rand, seq = jobs["rand4k"], jobs["seq1m"]
    return {"rand4k_read_iops": rand["read"]["iops"], "rand4k_write_iops": rand["write"]["iops"],
            "seq1m_read_mbps": seq["read"]["bw"] / 1024}


def _send(ip: str, port: int, mib: int) -> float:
    """Send ``mib`` MiB to a listening nc; seconds until the receiver closed."""
    chunk = b"\0" * 65536
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    s.settimeout(300)
    t0 = time.monotonic()
    for _ in range(mib * 16):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    return time.monotonic() - t0


def net(env: BenchEnv, p: Place, mib: int, pings: int) -> dict[str, float]:
    port = NC_PORT
    # nc quits when its stdin ends: feed it a sleep, not /dev/null
    listen = f"setsid sh -c 'sleep 120 | nc -l -p {port}' </dev/null >/dev/null 2>&1 &"
    secs = []
    for _ in range(2):
        if p.kind == "native":
            proc = subprocess.Popen(["busybox", "nc", "-l", "-p", str(port)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            secs.append(_send("127.0.0.1", port, mib))
            proc.kill()
            proc.wait(timeout=30)
        else:
            env.sh(p, listen)
            secs.append(_send(p.ip, port, mib))
    r = subprocess.run(["busybox", "ping", "-c", str(pings), "-i", "0.2", "-q", p.ip],
                       capture_output=True, text=True, timeout=pings + 30)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    return {"tcp_mbit": mib * 8 * 1.048576 / min(secs),
            "rtt_ms": float(m.group(1)) if m else float("nan")}


def run(env: BenchEnv, places: list[Place], q: dict[str, Any], progress: Any
        ) -> dict[str, Any]:
    """Every figure per place, and ratios against native (guest / native; for times
    the inverse, so 1.0 = as fast as native and lower is worse for every figure)."""
    out: dict[str, Any] = {"places": {}, "params": q}
    for p in places:
        progress(f"overhead: {p.kind}")
        tgt = q["target_s"]
        cpu, cpu_size = _rate(env, p, cpu_job, q["cpu_mib"], q["reps"], tgt)
        mem, _ = _rate(env, p, mem_job, q["mem_mib"], q["reps"], tgt)
        net_mib = q["net_mib"] if p.kind != "vm" else max(8, q["net_mib"] // 8)
        fig = {"cpu_mibps": cpu, "cpu_job_mib": cpu_size, "mem_mbps": mem,
               **disk(env, p, q["disk_mib"], q["reps"], tgt),
               **net(env, p, net_mib, q["pings"])}
        f = fio(env, p, q["fio_mb"], q["fio_s"])
        if f:
            fig.update({f"fio_{k}": v for k, v in f.items()})
        out["places"][p.kind] = {k: round(v, 3) for k, v in fig.items()}
    base = out["places"].get("native", {})
    out["ratios"] = {}
    for kind, fig in out["places"].items():
        if kind == "native":
            continue
        rat = {}
        for k, v in fig.items():
            if k in base and base[k] and not k.endswith("_mib"):
                # rtt: lower is better, so native/guest keeps "1.0 = native, lower = worse"
                rat[k] = round(base[k] / v if k == "rtt_ms" else v / base[k], 3)
        out["ratios"][kind] = rat
    return out
