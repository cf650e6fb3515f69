"""Per-instance noisy-neighbour metrics, read from the host side.

Why host side: a guest can lie about itself or be too busy to answer, the host cannot.
For a container every number comes from its own cgroups (found through its init
process, so LXC's ``-1`` suffixes for duplicate names do not matter) and the host end
of its veth. For a VM the CPU figures come from the QEMU process's cgroup (the driver
puts it in ``cpu/vpshost/vm-<name>``), memory from QEMU's resident size, disk from
QEMU's own block statistics (QMP ``query-blockstats``: bytes and time in flight) and
the network from the tap.

Every value is a cumulative counter or a gauge; rates are the reader's job (``vps top``
takes two samples). A value the host cannot give is None and is left out of /metrics;
``unavailable`` says why (for example PSI on a pure cgroup v1 host).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from vpshost.host import cgroups

ROOT = cgroups.ROOT
Sample = dict[str, Any]
PSI_RESOURCES = ("cpu", "memory", "io")


# -- small readers ----------------------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _kv(text: str | None) -> dict[str, int]:
    """'key value' lines (cpu.stat, memory.events, oom_control) as a dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_psi(text: str | None) -> dict[str, float]:
    """A *.pressure file: some/full avg10 (percent) and total (seconds)."""
    out: dict[str, float] = {}
    for line in (text or "").splitlines():
        kind, *fields = line.split()
        vals = dict(f.split("=", 1) for f in fields if "=" in f)
        if "avg10" in vals:
            out[f"{kind}_avg10"] = float(vals["avg10"])
        if "total" in vals:
            out[f"{kind}_seconds"] = int(vals["total"]) / 1e6
    return out


def parse_blkio_bytes(text: str | None) -> tuple[int, int]:
    """v1 blkio.throttle.io_service_bytes: sum of Read and Write over every device."""
    rd = wr = 0
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                rd += int(parts[2])
            elif parts[1] == "Write":
                wr += int(parts[2])
    return rd, wr


def parse_io_stat(text: str | None) -> tuple[int, int]:
    """v2 io.stat: rbytes and wbytes summed over devices."""
    rd = wr = 0
    for line in (text or "").splitlines():
        vals = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        rd += int(vals.get("rbytes", 0))
        wr += int(vals.get("wbytes", 0))
    return rd, wr


def cgroup_paths(pid: int, top_only: bool = False) -> dict[str, Path]:
    """Controller -> cgroup directory of ``pid`` (``unified`` for the v2 hierarchy).
    Processes in a root cgroup get no entry: the root holds everyone, not this guest."""
    out: dict[str, Path] = {}
    text = _read(Path(f"/proc/{pid}/cgroup")) or ""
    v2_root = ROOT if cgroups.layout(ROOT) is cgroups.Layout.V2 else ROOT / "unified"
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        if top_only:
            parts = [p for p in path.split("/") if p]
            path = "/" + parts[0] if parts else "/"
        if path == "/":
            continue
        if ctrls == "":
            out["unified"] = v2_root / path.lstrip("/")
            continue
        for c in ctrls.split(","):
            for mount in (ROOT / c, ROOT / ctrls):
                if mount.is_dir():
                    out[c] = mount / path.lstrip("/")
                    break
    return out


def _wait_seconds(tids: list[int]) -> float:
    """Time these threads were runnable but not running (schedstat field 2): what a
    guest experiences as steal when its neighbours hold the host CPUs."""
    total = 0
    for tid in tids[:512]:
        text = _read(Path(f"/proc/{tid}/schedstat"))
        if text:
            with contextlib.suppress(ValueError, IndexError):
                total += int(text.split()[1])
    return total / 1e9


def _link_bytes(link: str | None) -> tuple[int | None, int | None]:
    """Guest's received and sent bytes, from the host end of its link (inverted)."""
    if not link:
        return None, None
    stats = Path("/sys/class/net") / link / "statistics"
    return _int(stats / "tx_bytes"), _int(stats / "rx_bytes")


# -- where one instance lives ----------------------------------------------------------
@dataclass
class Target:
    name: str
    type: str
    tenant: str
    pid: int | None = None
    link: str | None = None  # host-side interface
    cg: dict[str, Path] = field(default_factory=dict)
    qmp: Path | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


def locate(svc: Any, row: dict[str, Any]) -> Target:
    """Find the processes, cgroups and interface of a running instance."""
    t = Target(row["name"], row["type"], row.get("tenant") or "default")
    if row["type"] == "container":
        from vpshost.runner import run

        out = run(["lxc-info", "-n", t.name, "-P", str(svc.config.guests_dir)],
                  check=False, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "PID" and val.strip().isdigit():
                t.pid = int(val)
            elif key.strip() == "Link":
                t.link = val.strip()
        if t.pid:
            t.cg = cgroup_paths(t.pid, top_only=True)
    elif row["type"] == "vm":
        from vpshost.drivers.qemu import process
        from vpshost.drivers.qemu.paths import VmPaths
        from vpshost.host import network

        paths = VmPaths(svc.config.guests_dir / t.name)
        t.pid = process.qemu_pid(paths)
        t.qmp = paths.qmp
        t.link = network.tap_for(paths.dir) if row.get("ip") else None
        if t.pid:
            t.cg = cgroup_paths(t.pid)
    if "unified" not in t.cg:
        t.unavailable["psi"] = ("no per-cgroup PSI: the guest has no cgroup v2 group"
                                if Path("/proc/pressure").exists() else
                                "the kernel has no PSI (/proc/pressure)")
    return t


# -- one sample ------------------------------------------------------------------------
def _cpu(t: Target, s: Sample) -> None:
    cpu = t.cg.get("cpu")
    stat = _kv(_read(cpu / "cpu.stat")) if cpu else {}
    uni = t.cg.get("unified")
    if not stat and uni:
        stat = _kv(_read(uni / "cpu.stat"))
    s["cpu_periods"] = stat.get("nr_periods")
    s["cpu_throttled_periods"] = stat.get("nr_throttled")
    if "throttled_time" in stat:  # v1, ns
        s["cpu_throttled_seconds"] = stat["throttled_time"] / 1e9
    elif "throttled_usec" in stat:
        s["cpu_throttled_seconds"] = stat["throttled_usec"] / 1e6
    usage = None
    acct = t.cg.get("cpuacct")
    if acct:
        ns = _int(acct / "cpuacct.usage")
        usage = ns / 1e9 if ns is not None else None
    if usage is None and "usage_usec" in stat:
        usage = stat["usage_usec"] / 1e6
    if usage is None and t.pid:
        with contextlib.suppress(psutil.Error):
            ct = psutil.Process(t.pid).cpu_times()
            usage = ct.user + ct.system
    s["cpu_seconds"] = usage
    tids: list[int] = []
    if t.type == "vm" and t.pid:
        with contextlib.suppress(OSError):
            tids = [int(x.name) for x in Path(f"/proc/{t.pid}/task").iterdir()]
    elif cpu:
        text = _read(cpu / "tasks") or ""
        tids = [int(x) for x in text.split()]
    elif uni:
        tids = [int(x) for x in (_read(uni / "cgroup.threads") or "").split()]
    s["cpu_wait_seconds"] = _wait_seconds(tids) if tids else None


def _memory(t: Target, s: Sample) -> None:
    mem = t.cg.get("memory")
    uni = t.cg.get("unified")
    if mem:
        s["memory_bytes"] = _int(mem / "memory.usage_in_bytes")
        limit = _int(mem / "memory.limit_in_bytes")
        s["memory_limit_bytes"] = limit if limit and limit < 2**60 else None
        # with swap accounting the memsw limit (memory + swap) is often the one hit
        hits = [v for v in (_int(mem / "memory.failcnt"), _int(mem / "memory.memsw.failcnt"))
                if v is not None]
        s["memory_failcnt"] = max(hits) if hits else None
        oom = _kv(_read(mem / "memory.oom_control"))
        s["memory_under_oom"] = oom.get("under_oom")
        s["memory_oom_kills"] = oom.get("oom_kill")
    elif uni and (uni / "memory.current").exists():
        s["memory_bytes"] = _int(uni / "memory.current")
        lim = (_read(uni / "memory.max") or "max").strip()
        s["memory_limit_bytes"] = int(lim) if lim.isdigit() else None
        ev = _kv(_read(uni / "memory.events"))
        s["memory_failcnt"] = ev.get("max")
        s["memory_oom_kills"] = ev.get("oom_kill")
    elif t.pid:
        with contextlib.suppress(psutil.Error):
            s["memory_bytes"] = psutil.Process(t.pid).memory_info().rss
    if t.type == "vm" and t.pid:
        with contextlib.suppress(psutil.Error):
            s["memory_bytes"] = psutil.Process(t.pid).memory_info().rss


def _io(t: Target, s: Sample) -> None:
    blk = t.cg.get("blkio")
    uni = t.cg.get("unified")
    if t.type == "vm" and t.qmp:
        from vpshost.drivers.qemu.monitor import MonitorError, qmp

        with contextlib.suppress(MonitorError, OSError):
            stats = qmp(t.qmp, "query-blockstats", timeout=2)
            rd = wr = wait_ns = 0
            for dev in stats if isinstance(stats, list) else []:
                st = dev.get("stats", {})
                rd += st.get("rd_bytes", 0)
                wr += st.get("wr_bytes", 0)
                wait_ns += st.get("rd_total_time_ns", 0) + st.get("wr_total_time_ns", 0)
            s["io_read_bytes"], s["io_write_bytes"] = rd, wr
            s["io_wait_seconds"] = wait_ns / 1e9
        return
    if blk:
        s["io_read_bytes"], s["io_write_bytes"] = parse_blkio_bytes(
            _read(blk / "blkio.throttle.io_service_bytes"))
    elif uni and (uni / "io.stat").exists():
        s["io_read_bytes"], s["io_write_bytes"] = parse_io_stat(_read(uni / "io.stat"))


def _psi(t: Target, s: Sample) -> None:
    uni = t.cg.get("unified")
    if not uni:
        return
    for res in PSI_RESOURCES:
        for k, v in parse_psi(_read(uni / f"{res}.pressure")).items():
            s[f"psi_{res}_{k}"] = v


def sample(t: Target) -> Sample:
    s: Sample = {"name": t.name, "type": t.type, "tenant": t.tenant, "pid": t.pid,
                 "time": time.monotonic(), "unavailable": dict(t.unavailable)}
    _cpu(t, s)
    _memory(t, s)
    _io(t, s)
    _psi(t, s)
    s["net_rx_bytes"], s["net_tx_bytes"] = _link_bytes(t.link)
    if t.type == "vm":
        s["unavailable"].setdefault(
            "memory_failcnt", "QEMU runs in the root memory cgroup; the balloon sets the "
            "guest's size")
    return s


def collect(svc: Any, caller: Any = None) -> list[Sample]:
    """One sample of every running instance this caller may see."""
    from vpshost.service.access import LOCAL_ADMIN

    rows = [r for r in svc.list(caller or LOCAL_ADMIN)
            if r["state"] == "running" and r.get("host", svc.host) == svc.host]
    out = []
    for r in rows:
        with contextlib.suppress(Exception):
            out.append(sample(locate(svc, r)))
    return out


def host_sample() -> Sample:
    """Host-wide figures: memory, PSI (system-wide where the kernel has it), KSM."""
    from vpshost.host import ksm

    vm = psutil.virtual_memory()
    s: Sample = {"memory_total_bytes": vm.total, "memory_available_bytes": vm.available}
    for res in PSI_RESOURCES:
        for k, v in parse_psi(_read(Path("/proc/pressure") / res)).items():
            s[f"psi_{res}_{k}"] = v
    st = ksm.status()
    if st.get("available"):
        s["ksm_run"] = st.get("run")
        s["ksm_pages_sharing"] = st.get("pages_sharing")
        s["ksm_saved_bytes"] = int(st.get("saved_mb", 0) * 2**20)
    return s


# -- rates for `vps top` -----------------------------------------------------------------
def rates(before: Sample, after: Sample) -> dict[str, float | None]:
    """Per-second rates between two samples of one instance."""
    dt = max(1e-3, after["time"] - before["time"])

    def d(key: str) -> float | None:
        a, b = after.get(key), before.get(key)
        return None if a is None or b is None else max(0.0, (a - b) / dt)

    out = {"cpu_pct": d("cpu_seconds"), "wait_pct": d("cpu_wait_seconds"),
           "throttled_per_s": d("cpu_throttled_periods"),
           "io_read_bps": d("io_read_bytes"), "io_write_bps": d("io_write_bytes"),
           "net_rx_bps": d("net_rx_bytes"), "net_tx_bps": d("net_tx_bytes")}
    for k in ("cpu_pct", "wait_pct"):
        if out[k] is not None:
            out[k] = out[k] * 100  # type: ignore[operator]
    return out


# -- Prometheus text format --------------------------------------------------------------
# name -> (type, help); counters end in _total as the format expects
SERIES: dict[str, tuple[str, str, str]] = {
    "cpu_seconds": ("vps_cpu_seconds_total", "counter", "CPU time used"),
    "cpu_wait_seconds": ("vps_cpu_wait_seconds_total", "counter",
                         "time runnable but waiting for a host CPU (steal as the guest sees it)"),
    "cpu_periods": ("vps_cpu_periods_total", "counter", "CFS enforcement periods"),
    "cpu_throttled_periods": ("vps_cpu_throttled_periods_total", "counter",
                              "CFS periods in which the cap throttled the guest"),
    "cpu_throttled_seconds": ("vps_cpu_throttled_seconds_total", "counter",
                              "time throttled by the CPU cap"),
    "memory_bytes": ("vps_memory_bytes", "gauge", "memory in use (VMs: QEMU resident size)"),
    "memory_limit_bytes": ("vps_memory_limit_bytes", "gauge", "memory limit"),
    "memory_failcnt": ("vps_memory_limit_hits_total", "counter",
                       "times the memory limit was hit (v1 failcnt, v2 events max)"),
    "memory_under_oom": ("vps_memory_under_oom", "gauge", "1 while the guest is OOM-stalled"),
    "memory_oom_kills": ("vps_memory_oom_kills_total", "counter", "OOM kills in the guest"),
    "io_read_bytes": ("vps_io_read_bytes_total", "counter", "block bytes read"),
    "io_write_bytes": ("vps_io_write_bytes_total", "counter", "block bytes written"),
    "io_wait_seconds": ("vps_io_wait_seconds_total", "counter",
                        "summed time block requests were in flight (VMs)"),
    "net_rx_bytes": ("vps_net_receive_bytes_total", "counter", "bytes the guest received"),
    "net_tx_bytes": ("vps_net_transmit_bytes_total", "counter", "bytes the guest sent"),
}
for _res in PSI_RESOURCES:
    for _kind in ("some", "full"):
        SERIES[f"psi_{_res}_{_kind}_seconds"] = (
            f"vps_psi_{_res}_{_kind}_seconds_total", "counter",
            f"PSI {_res} {_kind}: time stalled (per-cgroup, cgroup v2 only)")

HOST_SERIES = {
    "memory_total_bytes": ("vps_host_memory_total_bytes", "gauge", "host memory"),
    "memory_available_bytes": ("vps_host_memory_available_bytes", "gauge",
                               "host MemAvailable"),
    "ksm_run": ("vps_host_ksm_run", "gauge", "1 while KSM scans"),
    "ksm_pages_sharing": ("vps_host_ksm_pages_sharing", "gauge", "pages deduplicated by KSM"),
    "ksm_saved_bytes": ("vps_host_ksm_saved_bytes", "gauge", "memory KSM saves"),
}
for _res in PSI_RESOURCES:
    for _kind in ("some", "full"):
        HOST_SERIES[f"psi_{_res}_{_kind}_seconds"] = (
            f"vps_host_psi_{_res}_{_kind}_seconds_total", "counter",
            f"PSI {_res} {_kind}, system-wide")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def prometheus(samples: list[Sample], host: Sample | None = None, host_name: str = "local"
               ) -> str:
    """The text exposition format (version 0.0.4): HELP, TYPE, then one line per series."""
    lines: list[str] = []
    up = ("vps_instance_up", "gauge", "1 per running instance (its labels name it)")
    lines += [f"# HELP {up[0]} {up[2]}", f"# TYPE {up[0]} {up[1]}"]
    for s in samples:
        lines.append(f'{up[0]}{{name="{_esc(s["name"])}",type="{_esc(s["type"])}",'
                     f'tenant="{_esc(s["tenant"])}"}} 1')
    for key, (metric, kind, help_) in SERIES.items():
        rows = [s for s in samples if s.get(key) is not None]
        if not rows:
            continue
        lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}"]
        for s in rows:
            lines.append(f'{metric}{{name="{_esc(s["name"])}",type="{_esc(s["type"])}",'
                         f'tenant="{_esc(s["tenant"])}"}} {_num(s[key])}')
    for key, (metric, kind, help_) in HOST_SERIES.items():
        if host and host.get(key) is not None:
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}",
                      f'{metric}{{host="{_esc(host_name)}"}} {_num(host[key])}']
    return "\n".join(lines) + "\n"
