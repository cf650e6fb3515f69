"""`vps`: one verb per action; `--json` wherever there is output to parse.

Works locally through the service layer, or against `vps serve` when a server is
configured ([server] url and token, or VPS_SERVER and VPS_TOKEN).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from vpshost.errors import UsageError, VpsError
from vpshost.units import parse_size_mb

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Create, run and manage VPS guests: containers, VMs and Xen domains.")
image_app = typer.Typer(no_args_is_help=True, help="Build and import images.")
port_app = typer.Typer(no_args_is_help=True, help="Forward host ports to guests.")
snap_app = typer.Typer(no_args_is_help=True, help="Snapshots of a guest.")
host_app = typer.Typer(no_args_is_help=True, help="This host.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
bench_app = typer.Typer(help="Benchmarks: the comparison suite (no subcommand), "
                        "lifecycle against the raw tools.")
for sub, name in ((image_app, "image"), (port_app, "port"), (snap_app, "snapshot"),
                  (host_app, "host"), (token_app, "token"), (bench_app, "bench")):
    app.add_typer(sub, name=name)
from vpshost.cli.lab import lab_app  # noqa: E402

app.add_typer(lab_app, name="lab")

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Name = Annotated[str, typer.Argument(help="Instance name.")]


def backend() -> Any:
    """The local service, or a client of the configured server (same methods)."""
    from vpshost.config import load

    cfg = load()
    if cfg.server.url:
        from vpshost.client import RemoteService

        return RemoteService(cfg.server.url, cfg.server.token)
    from vpshost.service import Service

    svc = Service(cfg)
    svc.reconcile(report=lambda m: print(f"reconciled: {m}", file=sys.stderr))
    return svc


def local_service() -> Any:
    from vpshost.service import Service

    return Service()


def progress_printer() -> Any:
    from rich.console import Console

    con = Console(stderr=True)
    return lambda msg: con.print(f"[dim]…[/] {msg}")


def printed_json(data: Any, as_json: bool) -> bool:
    """Print ``data`` as JSON when asked; says whether it did."""
    if as_json:
        from vpshost.cli.output import emit_json

        emit_json(data)
    return as_json


def show_or_json(data: Any, as_json: bool) -> None:
    from vpshost.cli import output

    if as_json:
        output.emit_json(data)
    elif isinstance(data, list):
        output.instance_table(data)
    else:
        output.instance_detail(data)


# -- instances ------------------------------------------------------------------------
@app.command()
def create(
    name: Name,
    type: Annotated[str, typer.Option("--type", "-t", help="container, vm or xen")] = "container",
    image: Annotated[str, typer.Option(help="See `vps images`.")] = "busybox",
    cpus: Annotated[int, typer.Option(help="Virtual CPUs.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory, e.g. 256M or 1G.")] = "256M",
    swap: Annotated[str, typer.Option(help="Swap beyond memory.")] = "0",
    disk: Annotated[str, typer.Option(help="Root disk size.")] = "1G",
    pids: Annotated[int, typer.Option(help="Most processes at once; 0: no limit.")] = 0,
    cpu_cap: Annotated[int, typer.Option(help="CPU cap in percent of one core; 0: none.")] = 0,
    cpu_weight: Annotated[int, typer.Option(help="Share under contention, 1-10000.")] = 100,
    io_read_bps: Annotated[str, typer.Option(help="Disk read limit per second, e.g. 10M.")] = "0",
    io_write_bps: Annotated[str, typer.Option(help="Disk write limit per second.")] = "0",
    io_read_iops: Annotated[int, typer.Option(help="Disk read operations per second.")] = 0,
    io_write_iops: Annotated[int, typer.Option(help="Disk write operations per second.")] = 0,
    bandwidth: Annotated[int, typer.Option(help="Network egress limit in Mbit/s.")] = 0,
    privileged: Annotated[bool, typer.Option(
        help="Container without a user namespace (root inside is root outside).")] = False,
    accel: Annotated[str, typer.Option(help="VMs: kvm or tcg; default picks.")] = "",
    mode: Annotated[str, typer.Option(help="Xen: pv, pvh or hvm.")] = "",
    ssh_key: Annotated[list[str] | None, typer.Option(
        help="A public key for root (a .pub file or the key itself); repeat for more.")
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it once created.")] = False,
    as_json: Json = False,
) -> None:
    """Create a guest."""
    from vpshost.models import Plan
    from vpshost.service import CreateRequest

    plan = Plan(vcpus=cpus, memory_mb=parse_size_mb(memory, "--memory", allow_zero=False),
                swap_mb=parse_size_mb(swap, "--swap"),
                disk_mb=parse_size_mb(disk, "--disk", allow_zero=False),
                cpu_cap_pct=cpu_cap, cpu_weight=cpu_weight,
                io_read_bps=parse_size_mb(io_read_bps, "--io-read-bps") * 1024 * 1024,
                io_write_bps=parse_size_mb(io_write_bps, "--io-write-bps") * 1024 * 1024,
                io_read_iops=io_read_iops, io_write_iops=io_write_iops,
                bandwidth_mbit=bandwidth, max_procs=pids)
    options: dict[str, Any] = {k: v for k, v in (("accel", accel), ("mode", mode)) if v}
    if ssh_key:
        options["ssh_keys"] = [line for k in ssh_key for line in _key_text(k).splitlines()]
    req = CreateRequest(name=name, type=type, image=image, plan=plan, privileged=privileged,
                        start=start, options=options)
    data = backend().create(req, progress=progress_printer())
    show_or_json(data, as_json)


def _key_text(given: str) -> str:
    """--ssh-key takes a file's path or the key itself."""
    from pathlib import Path

    path = Path(given).expanduser()
    if given.startswith(("ssh-", "ecdsa-", "sk-")) or not path.exists():
        return given
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the SSH key file {given}: {exc.strerror}") from None


def _power(verb: str, name: str, as_json: bool) -> None:
    data = getattr(backend(), verb)(name)
    if as_json:
        show_or_json(data, True)
    else:
        typer.echo(f"{name}: {data['state']}")


@app.command("start")
def start_cmd(name: Name, as_json: Json = False) -> None:
    """Start a stopped guest."""
    _power("start", name, as_json)


@app.command()
def stop(name: Name, as_json: Json = False,
         timeout: Annotated[float | None, typer.Option(
             help="Seconds to wait for a clean shutdown before forcing it.")] = None) -> None:
    """Stop a guest: a clean shutdown, forced after a timeout."""
    data = backend().stop(name, timeout=timeout)
    show_or_json(data, True) if as_json else typer.echo(f"{name}: {data['state']}")


@app.command()
def restart(name: Name, as_json: Json = False) -> None:
    """Stop and start a guest."""
    _power("restart", name, as_json)


@app.command()
def pause(name: Name, as_json: Json = False) -> None:
    """Freeze a running guest."""
    _power("pause", name, as_json)


@app.command()
def resume(name: Name, as_json: Json = False) -> None:
    """Unfreeze a paused guest."""
    _power("resume", name, as_json)


@app.command()
def delete(names: Annotated[list[str], typer.Argument(help="Instance names.")],
           force: Annotated[bool, typer.Option(
               "--force", "-f", help="Stop it first if it is running.")] = False) -> None:
    """Delete guests with their disks, addresses and port forwards."""
    svc = backend()
    for name in names:
        svc.delete(name, force=force)
        typer.echo(f"{name}: deleted")


@app.command("list")
def list_cmd(as_json: Json = False) -> None:
    """List guests."""
    from vpshost.config import load

    cfg = load()
    rows = None
    if not cfg.server.url:
        from vpshost.store.fastread import list_instances

        rows = list_instances(cfg.database_url, state_dir=cfg.state_dir)
    show_or_json(backend().list() if rows is None else rows, as_json)


@app.command()
def show(name: Name, as_json: Json = False) -> None:
    """Show one guest: plan, address, ports, usage and recent events."""
    show_or_json(backend().show(name, stats=True), as_json)


@app.command()
def resize(name: Name,
           cpus: Annotated[int | None, typer.Option()] = None,
           memory: Annotated[str | None, typer.Option()] = None,
           swap: Annotated[str | None, typer.Option()] = None,
           disk: Annotated[str | None, typer.Option(help="Grow only; guest stopped.")] = None,
           cpu_cap: Annotated[int | None, typer.Option()] = None,
           pids: Annotated[int | None, typer.Option()] = None,
           as_json: Json = False) -> None:
    """Change a guest's plan; limits apply live where the type allows."""
    changes = {
        "vcpus": cpus, "cpu_cap_pct": cpu_cap, "max_procs": pids,
        "memory_mb": parse_size_mb(memory, "--memory", allow_zero=False) if memory else None,
        "swap_mb": parse_size_mb(swap, "--swap") if swap is not None else None,
        "disk_mb": parse_size_mb(disk, "--disk", allow_zero=False) if disk else None,
    }
    if all(v is None for v in changes.values()):
        raise UsageError("nothing to change", "give at least one of --cpus, --memory, "
                         "--swap, --disk, --cpu-cap, --pids")
    show_or_json(backend().resize(name, **changes), as_json)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec(name: Name, command: Annotated[list[str] | None, typer.Argument(
        help="The command, after --.")] = None,
         timeout: Annotated[float, typer.Option(help="Seconds before giving up.")] = 60.0
         ) -> None:
    """Run a command inside a guest: `vps exec NAME -- CMD ARGS...`."""
    result = backend().exec(name, command or [], timeout=timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    raise typer.Exit(result.returncode)


@app.command()
def console(name: Name) -> None:
    """Attach this terminal to the guest's console."""
    argv = local_service().console_argv(name)
    typer.echo(f"attaching to {name}; detach with Ctrl-a q", err=True)
    os.execvp(argv[0], argv)


@app.command()
def events(name: Annotated[str | None, typer.Argument()] = None, as_json: Json = False,
           limit: int = 50) -> None:
    """The event log, newest first."""
    rows = backend().events(name, limit=limit)
    if printed_json(rows, as_json):
        return
    for e in rows:
        typer.echo(f"{e['time'][:19]}  {e['instance'] or '-':<16} {e['kind']:<14} "
                   f"{e['message']}")


@app.command()
def reconcile() -> None:
    """Check every guest against what the host really runs and fix the store."""
    fixed = local_service().reconcile(all_instances=True, report=typer.echo)
    if not fixed:
        typer.echo("store and host agree")


# -- images ---------------------------------------------------------------------------
@app.command()
def images(as_json: Json = False) -> None:
    """List images."""
    rows = backend().images()
    if printed_json(rows, as_json):
        return
    for i in rows:
        typer.echo(f"{i['name']:<14} {i['type']:<10} {'built' if i['built'] else 'not built':<10}"
                   f" {i['description']}")


@image_app.command("build")
def image_build(name: str, type: Annotated[str, typer.Option("--type", "-t")] = "container",
                force: bool = False) -> None:
    """Build an image now (otherwise the first create builds it)."""
    local_service().image_build(name, type, force=force, progress=progress_printer())
    typer.echo(f"image {name}: built")


@image_app.command("import")
def image_import(file: str, name: Annotated[str | None, typer.Option()] = None) -> None:
    """Import a VMware VMDK, OVA/OVF, raw or qcow2 disk as a VM image."""
    from pathlib import Path

    from vpshost.host import vmimages

    svc = local_service()
    image = name or Path(file).stem.lower().replace("_", "-").replace(".", "-")
    vmimages.import_image(svc.config, Path(file), image, progress_printer())
    svc.record(None, "image-imported", f"vm image {image} from {file}")
    typer.echo(f"image {image}: imported; create a VM with --type vm --image {image}")


# -- ports ----------------------------------------------------------------------------
def _port_pair(text: str) -> tuple[int, int]:
    try:
        host, _, guest = text.partition(":")
        return int(host), int(guest or host)
    except ValueError:
        raise UsageError(f"'{text}' is not HOSTPORT:GUESTPORT", "for example 8080:80") from None


@port_app.command("add")
def port_add(name: Name, ports: Annotated[str, typer.Argument(help="HOSTPORT:GUESTPORT")],
             udp: bool = False) -> None:
    """Forward a host port to a port of the guest."""
    host, guest = _port_pair(ports)
    backend().port_add(name, host, guest, "udp" if udp else "tcp")
    typer.echo(f"{name}: host port {host} -> {guest}")


@port_app.command("list")
def port_list(name: Annotated[str | None, typer.Argument()] = None, as_json: Json = False
              ) -> None:
    """List port forwards."""
    rows = backend().ports(name)
    if printed_json(rows, as_json):
        return
    for p in rows:
        typer.echo(f"{p['instance']:<16} {p['proto']} {p['host_port']:>5} -> "
                   f"{p['guest_ip']}:{p['guest_port']}")


@port_app.command("remove")
def port_remove(name: Name, host_port: int, udp: bool = False) -> None:
    """Remove a port forward."""
    backend().port_remove(name, host_port, "udp" if udp else "tcp")
    typer.echo(f"{name}: host port {host_port} no longer forwarded")


# -- snapshots ------------------------------------------------------------------------
@snap_app.command("create")
def snapshot_create(name: Name, snap: str) -> None:
    """Snapshot disk (and memory, if running)."""
    backend().snapshot(name, snap)
    typer.echo(f"{name}: snapshot {snap} taken")


@snap_app.command("list")
def snapshot_list(name: Name, as_json: Json = False) -> None:
    rows = backend().snapshots(name)
    if printed_json(rows, as_json):
        return
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['created_at'][:19]}  memory: {r['with_memory']}")


@snap_app.command("restore")
def snapshot_restore(name: Name, snap: str) -> None:
    data = backend().restore(name, snap)
    typer.echo(f"{name}: restored {snap}; {data['state']}")


@snap_app.command("delete")
def snapshot_delete(name: Name, snap: str) -> None:
    backend().delete_snapshot(name, snap)
    typer.echo(f"{name}: snapshot {snap} deleted")


# -- host, tokens, server ---------------------------------------------------------------
@host_app.command("info")
def host_info(as_json: Json = False) -> None:
    """Kernel, cores, memory, cgroups, LXC/QEMU/KVM/Xen support, free disk."""
    data = backend().host_info()
    if printed_json(data, as_json):
        return
    for k, v in data.items():
        typer.echo(f"{k:<18} {v}")


@host_app.command("capacity")
def host_capacity(as_json: Json = False) -> None:
    """Committed against physical CPU, memory and disk per type, with overcommit ratios."""
    from vpshost.service import capacity

    data = capacity.report(local_service())
    if printed_json(data, as_json):
        return
    from vpshost.cli.perf import capacity_table

    capacity_table(data)


@host_app.command("reclaim")
def host_reclaim(watch: Annotated[bool, typer.Option(help="Keep running passes.")] = False,
                 as_json: Json = False) -> None:
    """One balloon-reclaim pass: shrink idle VMs when host memory is short (KSM on)."""
    import time

    from vpshost.cli.perf import reclaim_lines
    from vpshost.service import reclaim

    svc = local_service()
    while True:
        actions = reclaim.tick(svc)
        if as_json:
            from vpshost.cli.output import emit_json

            emit_json(actions)
        else:
            for line in reclaim_lines(actions):
                typer.echo(line)
        if not watch:
            return
        time.sleep(svc.config.reclaim.interval_s or 30)


@host_app.command("add")
def host_add(name: str,
             address: Annotated[str | None, typer.Argument(
                 metavar="[URL]", help="The agent's URL (or --url).")] = None,
             url: Annotated[str | None, typer.Option(
                 help="The agent: https://ADDR:PORT (mutual TLS) or http://ADDR:PORT")] = None,
             secret: Annotated[str | None, typer.Option(help="The agent's shared secret.")] = None,
             secret_file: Annotated[str | None, typer.Option()] = None,
             as_json: Json = False) -> None:
    """Register a host whose `vps agent` runs at URL."""
    from pathlib import Path

    if not (url or address) or (url and address and url != address):
        raise UsageError("give the agent's URL once", "vps host add NAME https://ADDR:8421")
    if not secret and not secret_file:
        raise UsageError("give the agent's secret", "--secret S or --secret-file FILE")
    value = secret or Path(secret_file or "").read_text().strip()
    data = local_service().host_add(name, url or address or "", value)
    _print_hosts([data], as_json)


def _print_hosts(rows: list[dict[str, Any]], as_json: bool) -> None:
    if printed_json(rows, as_json):
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("HOST", "STATE", "URL", "CORES", "MEMORY", "GUESTS", "VCPUS", "MEM USED",
                "KVM"):
        table.add_column(col, no_wrap=True)
    for h in rows:
        table.add_row(h["name"], h["state"], h["url"], str(h["cores"]),
                      f"{h['memory_mb']}M", str(h["guests"]), str(h["vcpus_committed"]),
                      f"{h['memory_committed_mb']}M", str(h["kvm"]))
    Console().print(table)


@host_app.command("list")
def host_list(as_json: Json = False) -> None:
    """Registered hosts with what is committed on each."""
    _print_hosts(local_service().host_list(), as_json)


@host_app.command("show")
def host_show(name: str, as_json: Json = False) -> None:
    data = local_service().host_show(name)
    if printed_json(data, as_json):
        return
    _print_hosts([data], False)
    typer.echo("guests: " + (", ".join(data["instances"]) or "none"))


@host_app.command("remove")
def host_remove(name: str) -> None:
    """Forget a host (it must have no guests)."""
    local_service().host_remove(name)
    typer.echo(f"host {name}: removed")


@host_app.command("drain")
def host_drain(name: str) -> None:
    """Move every guest off a host and stop placing new ones there."""
    moved = local_service().host_drain(name, progress=progress_printer())
    for m in moved:
        mig = m["migration"]
        typer.echo(f"{m['name']}: now on {m['host']} ({mig['mode']}, "
                   f"downtime {mig.get('downtime_ms', '?')} ms)")
    typer.echo(f"host {name}: drained ({len(moved)} guest(s) moved)")


@host_app.command("activate")
def host_activate(name: str) -> None:
    """Let placement use a drained host again."""
    local_service().host_activate(name)
    typer.echo(f"host {name}: active")


@app.command()
def migrate(name: Name,
            to: Annotated[str | None, typer.Option("--to", help="Target host.")] = None,
            live: Annotated[bool, typer.Option(
                help="Move while running: VMs; containers where `criu check` passes.")
            ] = False,
            frozen: Annotated[bool, typer.Option(
                help="Containers: freeze instead of stopping while the disk copies.")] = False,
            postcopy: Annotated[bool, typer.Option(help="Switch to post-copy.")] = False,
            downtime_ms: Annotated[int, typer.Option(help="Live: most downtime.")] = 300,
            as_json: Json = False) -> None:
    """Move a guest to another host (live: with a progress bar on a terminal)."""
    from vpshost.cli.migrate_view import MigrateView

    with MigrateView(bar=not as_json) as view:
        data = local_service().migrate(name, to=to, live=live, frozen=frozen,
                                       postcopy=postcopy, downtime_ms=downtime_ms,
                                       progress=view.step, sample=view.sample)
    if printed_json(data, as_json):
        return
    mig = data["migration"]
    typer.echo(f"{name}: now on {data['host']} ({mig['mode']}; downtime "
               f"{mig.get('downtime_ms', '?')} ms, total {mig.get('total_ms', '?')} ms)")


@app.command()
def agent(listen: Annotated[str, typer.Option(help="HOST:PORT")] = "0.0.0.0:8421",
          secret_file: Annotated[str | None, typer.Option(
              help="Default: <state_dir>/agent.secret")] = None,
          tls_dir: Annotated[str | None, typer.Option(
              help="Serve mutual TLS from this directory (agent.crt, agent.key, ca.crt from "
                   "`vps pki issue`). Default: [agent] tls_dir; none: plain HTTP.")] = None
          ) -> None:
    """Run this host's agent for a control plane."""
    from pathlib import Path

    from vpshost.agent.server import run_agent

    run_agent(listen, Path(secret_file) if secret_file else None,
              Path(tls_dir) if tls_dir else None)


pki_app = typer.Typer(no_args_is_help=True,
                      help="The cluster CA: mutual TLS between the control plane and agents.")
app.add_typer(pki_app, name="pki")


@pki_app.command("init")
def pki_init() -> None:
    """Make the cluster CA and the control plane's client certificate (in <state_dir>/pki);
    again later, it renews the client certificate when it is close to expiry."""
    from vpshost.agent import pki
    from vpshost.config import load

    cfg = load()
    done = pki.init(cfg.pki_dir)
    for line in done or [f"{cfg.pki_dir}: CA and client certificate already in place"]:
        typer.echo(line)


@pki_app.command("issue")
def pki_issue(name: Annotated[str, typer.Argument(help="The host's name.")],
              out: Annotated[str, typer.Option(help="Directory for agent.crt, agent.key "
                                                    "and ca.crt.")],
              ip: Annotated[list[str] | None, typer.Option(
                  help="An address in the agent's URL (repeat).")] = None,
              dns: Annotated[list[str] | None, typer.Option(
                  help="A DNS name in the agent's URL (repeat).")] = None,
              days: Annotated[int, typer.Option(help="Validity.")] = 730) -> None:
    """Issue an agent's certificate from the cluster CA."""
    from pathlib import Path

    from vpshost.agent import pki
    from vpshost.config import load

    cert = pki.issue_host(load().pki_dir, name, ip or [], dns or [], Path(out), days)
    typer.echo(f"{out}: certificate for {name} ({', '.join(pki.san_of(cert))}), valid until "
               f"{cert.not_valid_after_utc:%Y-%m-%d}")
    typer.echo(f"copy {out} to the host (keep agent.key mode 0600) and run "
               f"`vps agent --tls-dir DIR`")


@app.command()
def top(once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between samples.")] = 1.0
        ) -> None:
    """Live view of running guests: CPU, wait (steal), throttling, memory, disk, net, PSI."""
    from vpshost.cli.top import run_top

    run_top(local_service(), once=once, interval=interval)


@token_app.command("create")
def token_create(tenant: Annotated[str, typer.Option(help="Tenant the token acts for.")],
                 admin: bool = False) -> None:
    """Make an API token; it is shown once."""
    typer.echo(local_service().token_create(tenant, admin=admin))


@app.command()
def serve(listen: Annotated[str | None, typer.Option(help="HOST:PORT")] = None) -> None:
    """Run the REST API and web page."""
    from vpshost.api.server import run_server

    run_server(listen)


@bench_app.callback(invoke_without_command=True)
def bench_suite(ctx: typer.Context,
                quick: Annotated[bool, typer.Option("--quick", help="Under 10 minutes.")] = False,
                tiny: Annotated[bool, typer.Option("--tiny", hidden=True)] = False,
                types: Annotated[list[str] | None, typer.Option(
                    "--types", help="container, vm, xen (repeat); default all this host runs"
                )] = None,
                out: Annotated[str | None, typer.Option(
                    help="Directory for results.json, report.md and plots.")] = None) -> None:
    """Overhead, isolation, scalability, density and start-up per type against native."""
    if ctx.invoked_subcommand:
        return
    from pathlib import Path

    from vpshost.bench.cli import run_with_progress

    mode = "tiny" if tiny else "quick" if quick else "full"
    run_with_progress(mode, types, Path(out) if out else None)


@app.command()
def advise(workload: Annotated[str, typer.Option(
               help="cpu, io, kernel or density")] = "cpu",
           needs_own_kernel: Annotated[bool, typer.Option(
               "--needs-own-kernel", help="Kernel modules, another kernel version.")] = False,
           other_os: Annotated[bool, typer.Option(
               "--other-os", help="Windows, BSD or any non-Linux guest.")] = False,
           results: Annotated[str | None, typer.Option(
               help="A results.json; default the newest in the state dir or docs/results."
           )] = None,
           as_json: Json = False) -> None:
    """Recommend a guest type for a workload, from this host's measured results."""
    from pathlib import Path

    from vpshost.bench.advise import advise_cli

    advise_cli(workload, needs_own_kernel, other_os, Path(results) if results else None,
               as_json)


@bench_app.command("lifecycle")
def bench_lifecycle(count: Annotated[int, typer.Option("-n", help="Containers.")] = 20,
                    list_size: Annotated[int, typer.Option(
                        help="Instances in the store when timing `vps list --json`.")] = 200,
                    as_json: Json = False) -> None:
    """Create/start/stop/delete N busybox containers through vpshost and raw lxc-*."""
    from vpshost.bench.lifecycle import run_lifecycle

    run_lifecycle(count, list_size, as_json)


@bench_app.command("migration")
def bench_migration(runs: Annotated[int, typer.Option("-n", help="Runs per size.")] = 2,
                    as_json: Json = False) -> None:
    """Live migration of 256 MiB and 1 GiB VMs: vpshost vs raw QEMU (downtime, total)."""
    from vpshost.bench.migration import bench_migration as run
    from vpshost.bench.migration import render
    from vpshost.config import load

    result = run(load(), runs=runs, progress=progress_printer())
    if not printed_json(result, as_json):
        typer.echo(render(result))


@bench_app.command("vm")
def bench_vm(runs: Annotated[int, typer.Option("-n", help="Boots per side.")] = 3,
             as_json: Json = False) -> None:
    """Boot a tiny VM through vpshost and with the raw qemu command line; ratio and
    QEMU's memory overhead (the accelerator is in the output)."""
    from vpshost.config import load
    from vpshost.drivers.qemu.bench import bench_vm as run

    result = run(load(), runs=runs, progress=progress_printer())
    if not printed_json(result, as_json):
        for key, value in result.items():
            typer.echo(f"{key:<28} {value}")


@bench_app.command("lab")
def bench_lab(boot: Annotated[bool, typer.Option(
                  help="Boot the Xen and KVM lab hosts that are not up (and stop them after).")
              ] = False,
              out: Annotated[str, typer.Option(help="Directory for lab.json, lab.md, lab.png.")
                             ] = "",
              as_json: Json = False) -> None:
    """KVM against Xen at the same nesting level: a PV domain and a KVM vm from the same
    image on the two lab hosts, each against its own lab host."""
    from pathlib import Path

    from vpshost.bench import labcompare

    result = labcompare.run(progress=progress_printer(), boot=boot)
    if out:
        labcompare.write(result, Path(out))
    if not printed_json(result, as_json):
        typer.echo("\n".join(labcompare.markdown(result)))


def main() -> None:
    try:
        app()
    except VpsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the host refused something (a path, a disk, a permission)
        print(f"error: {exc}", file=sys.stderr)
        print("  hint: a problem on this host, not in the request; fix it and retry",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
