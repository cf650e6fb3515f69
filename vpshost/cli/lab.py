"""`vps lab xen|kvm up|down|status`: nested Xen and KVM hosts under QEMU TCG (docs/xen.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

lab_app = typer.Typer(no_args_is_help=True,
                      help="Nested lab hosts (a Xen dom0, a KVM host) under QEMU TCG.")
xen_app = typer.Typer(no_args_is_help=True, help="A nested Xen host (dom0 with the agent).")
kvm_app = typer.Typer(no_args_is_help=True, help="A nested KVM host (kvm_amd, QEMU, agent).")
lab_app.add_typer(xen_app, name="xen")
lab_app.add_typer(kvm_app, name="kvm")

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _cfg() -> Any:
    from vpshost.config import load

    return load()


def _print_status(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        from vpshost.cli.output import emit_json

        emit_json(rows)
        return
    if not rows:
        typer.echo("no lab hosts")
        return
    for r in rows:
        up = f"up {r['uptime_s']:.0f}s" if r["state"] == "up" and r["uptime_s"] else r["state"]
        agent = "agent answers" if r["agent"] else "agent not answering"
        typer.echo(f"{r['name']:<8} {r['kind']:<4} {up:<12} {r['url']:<26} "
                   f"{agent if r['state'] == 'up' else ''}")


def _up(kind: str, name: str, memory: int, dom0: int, smp: int, timeout: float,
        register: bool, as_json: bool) -> None:
    from vpshost.cli.main import progress_printer
    from vpshost.lab import hosts

    cfg = _cfg()
    data = hosts.up(cfg, kind, name, memory_mb=memory, dom0_mb=dom0, smp=smp,
                    timeout=timeout, progress=progress_printer())
    host = hosts._load(cfg, name)
    assert host is not None
    msg = hosts.register(host) if register else None
    data["registered"] = msg
    if as_json:
        from vpshost.cli.output import emit_json

        emit_json(data)
        return
    typer.echo(f"{name}: {kind} lab host up, agent at {data['url']} "
               f"(ready {data['agent_ready_s']}s after power-on)")
    if msg:
        typer.echo(f"{name}: {msg}")
    else:
        typer.echo(f"register it: vps host add {name} --url {data['url']} "
                   f"--secret $(cat {data['secret_file']})")


def _commands(app: typer.Typer, kind: str, default_name: str, default_mem: int) -> None:
    @app.command("up")
    def up_cmd(name: Annotated[str, typer.Option(help="Lab host name.")] = default_name,
               memory: Annotated[int, typer.Option(help="MiB of the QEMU guest.")] = default_mem,
               dom0: Annotated[int, typer.Option(help="Xen: dom0_mem in MiB.")] = 768,
               smp: Annotated[int, typer.Option(help="Virtual CPUs.")] = 2,
               timeout: Annotated[float, typer.Option(help="Seconds to wait for the agent.")
                                  ] = 600.0,
               register: Annotated[bool, typer.Option(
                   help="`vps host add` it once up.")] = True,
               as_json: Json = False) -> None:
        """Build the lab image if needed, boot the host and wait for its agent."""
        _up(kind, name, memory, dom0, smp, timeout, register, as_json)

    @app.command("down")
    def down_cmd(name: Annotated[str, typer.Option(help="Lab host name.")] = default_name
                 ) -> None:
        """Power the host off and remove its disk overlay and tap (the secret stays)."""
        from vpshost.lab import hosts

        hosts.down(_cfg(), name)
        typer.echo(f"{name}: down")

    @app.command("status")
    def status_cmd(name: Annotated[str | None, typer.Option(help="Lab host name.")] = None,
                   as_json: Json = False) -> None:
        """Up or down, uptime, address and whether the agent answers."""
        from vpshost.lab import hosts

        _print_status(hosts.status(_cfg(), kind, name), as_json)


_commands(xen_app, "xen", "xen1", 1536)
_commands(kvm_app, "kvm", "kvm1", 1536)


@lab_app.command("image")
def image_cmd(force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False
              ) -> None:
    """Build (or show) the shared lab image."""
    from vpshost.cli.main import progress_printer
    from vpshost.lab import image

    m = image.build(_cfg(), progress_printer(), force=force)
    for k, v in m.items():
        typer.echo(f"{k:<14} {v}")


@lab_app.command("exec", context_settings={"allow_extra_args": True,
                                          "ignore_unknown_options": True})
def exec_cmd(name: Annotated[str, typer.Argument(help="Lab host name.")],
             command: Annotated[list[str], typer.Argument(help="Command and arguments.")],
             timeout: Annotated[float, typer.Option(help="Seconds.")] = 120.0) -> None:
    """Run a command as root inside a lab host (over a virtio serial port)."""
    import sys

    from vpshost.lab import hosts

    res = hosts.exec_in(_cfg(), name, command, timeout)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    raise typer.Exit(res.returncode)


@lab_app.command("sync")
def sync_cmd(name: Annotated[str, typer.Argument(help="Lab host name.")]) -> None:
    """Copy this working tree's vpshost code into a lab host and restart its agent."""
    from vpshost.lab import hosts

    hosts.sync_code(_cfg(), name)
    typer.echo(f"{name}: code synced, agent restarting")
