"""`vps bench lifecycle`: container create/start/stop/delete through vpshost and through
the raw lxc-* commands on the same machine in the same run.

The raw side does what a sysadmin would do by hand for the same result: an ext4 image
of the same size made with mkfs.ext4 -d from the same cached rootfs, the same LXC
config, then lxc-start -d, lxc-stop and lxc-destroy. The vpshost side goes through
the public service API (store writes, address allocation, bridge check included).
It runs in a throwaway vpshost (bench.guests.bench_env), so it never touches the
user's guests.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpshost.host.addresses import mac_for
from vpshost.models import Guest, Plan

PHASES = ("create", "start", "stop", "delete")
PLAN = Plan(vcpus=1, memory_mb=64, disk_mb=64)


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _raw_side(svc: Any, names: list[str]) -> dict[str, list[float]]:
    """The same containers with lxc-* commands only, beside vpshost's in the same store
    directory layout (a separate lxcpath)."""
    from vpshost.drivers.container import ContainerDriver
    from vpshost.host import images
    from vpshost.runner import run

    lxcpath = svc.config.state_dir / "raw"
    lxcpath.mkdir(parents=True, exist_ok=True)
    drv = ContainerDriver(svc.config)
    rootfs = images.build(svc.config, "busybox", lambda _m: None,
                          shift=svc.config.container.idmap_base)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for i, name in enumerate(names):
        d = lxcpath / name
        # the same config vpshost renders, with a rootfs under the raw lxcpath
        # the top of the first segment: vpshost's own guests take the bottom
        top = ipaddress.ip_network(svc.addresses.segment(0).network).broadcast_address - 1
        ip = str(top - i)
        guest = Guest(id=10_000 + i, name=name, type="container", image="busybox", plan=PLAN,
                      net=svc.addresses.netspec(ip, mac_for(10_000 + i)), dir=d)
        config_text = drv._render_config(guest)

        def create(d: Path = d, config_text: str = config_text) -> None:
            d.mkdir()
            with open(d / "disk.img", "wb") as f:
                f.truncate(PLAN.disk_mb * 1024 * 1024)
            run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(rootfs), "-E",
                 f"root_owner={svc.config.container.idmap_base}:"
                 f"{svc.config.container.idmap_base}", str(d / "disk.img")])
            (d / "config").write_text(config_text)

        lx = ["-n", name, "-P", str(lxcpath)]
        times["create"].append(_timed(create))
        for phase, argv in (("start", ["lxc-start", *lx, "-d"]),
                            ("stop", ["lxc-stop", *lx, "-t", "10"]),
                            ("delete", ["lxc-destroy", *lx])):
            times[phase].append(_timed(lambda a=argv: run(a)))  # type: ignore[misc]
    return times


def _vps_side(svc: Any, names: list[str]) -> dict[str, list[float]]:
    from vpshost.service import CreateRequest

    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for name in names:
        req = CreateRequest(name=name, type="container", image="busybox", plan=PLAN)
        times["create"].append(_timed(lambda r=req: svc.create(r)))  # type: ignore[misc]
        times["start"].append(_timed(lambda n=name: svc.start(n)))  # type: ignore[misc]
        times["stop"].append(_timed(lambda n=name: svc.stop(n, timeout=10)))  # type: ignore[misc]
        times["delete"].append(_timed(lambda n=name: svc.delete(n)))  # type: ignore[misc]
    return times


def _time_list(count: int, svc: Any) -> dict[str, float]:
    """Wall time of `vps list --json` (a new process each time) with ``count`` instances."""
    from vpshost.service import CreateRequest

    existing = len(svc.list())
    for i in range(existing, count):
        svc.create(CreateRequest(name=f"lst{i}", image="busybox", plan=PLAN))
    vps = str(Path(sys.executable).with_name("vps"))  # bench_env set the environment
    samples = []
    for _ in range(7):
        t = time.perf_counter()
        out = subprocess.run([vps, "list", "--json"], capture_output=True,
                             check=True).stdout
        samples.append(time.perf_counter() - t)
        assert len(json.loads(out)) == count
    return {"instances": count, "median_ms": statistics.median(samples) * 1000,
            "min_ms": min(samples) * 1000}


def run_lifecycle(count: int, list_size: int, as_json: bool) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from vpshost.bench.guests import bench_env

    con = Console(stderr=as_json)
    with bench_env() as env:
        svc = env.svc
        # the listing needs hundreds of rows on a small host; admission control is not
        # what this measures, so the throwaway store may oversell freely
        svc.config.overcommit.container.vcpu = 1000.0
        con.print(f"[bold]lifecycle of {count} busybox containers[/] "
                  f"(vpshost service API vs raw lxc-*, alternating batches)")
        vps_t: dict[str, list[float]] = {p: [] for p in PHASES}
        raw_t: dict[str, list[float]] = {p: [] for p in PHASES}
        # alternate small batches so both sides see the same machine conditions
        batch = 5
        for start in range(0, count, batch):
            n = min(batch, count - start)
            for side, fn, acc in (("vps", _vps_side, vps_t), ("raw", _raw_side, raw_t)):
                names = [f"{side}{start + i}" for i in range(n)]
                for phase, vals in fn(svc, names).items():
                    acc[phase].extend(vals)
            con.print(f"  {min(start + n, count)}/{count}")
        result: dict[str, Any] = {"count": count, "phases": {}}
        table = Table("phase", "vpshost ms", "raw lxc ms", "ratio", box=None)
        for p in PHASES:
            v, r = statistics.median(vps_t[p]) * 1000, statistics.median(raw_t[p]) * 1000
            result["phases"][p] = {"vpshost_ms": round(v, 2), "raw_ms": round(r, 2),
                                   "ratio": round(v / r, 3)}
            table.add_row(p, f"{v:.1f}", f"{r:.1f}", f"{v / r:.2f}x")
        con.print(table)
        con.print(f"[bold]vps list --json with {list_size} instances[/] (new process each time)")
        result["list"] = _time_list(list_size, svc)
        con.print(f"  median {result['list']['median_ms']:.0f} ms, "
                  f"best {result['list']['min_ms']:.0f} ms")
        goal_start = result["phases"]["start"]["ratio"] <= 1.2
        goal_list = result["list"]["median_ms"] < 200
        result["goals"] = {"start_within_1.2x": goal_start, "list_under_200ms": goal_list}
        con.print(f"goals: start within 1.2x of lxc-start: {'met' if goal_start else 'MISSED'};"
                  f" list under 200 ms: {'met' if goal_list else 'MISSED'}")
        if as_json:
            print(json.dumps(result, indent=2))
        return result
