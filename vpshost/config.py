"""Settings: defaults, then a TOML file, then VPS_* environment variables.

The file is ``$VPS_CONFIG`` or ``/etc/vpshost/config.toml``; sections mirror the
dataclasses below (``[network] subnet = "10.88.0.0/16"``). Environment overrides:

  VPS_STATE_DIR, VPS_CACHE_DIR, VPS_DB_URL, VPS_SUBNET, VPS_SUBNET6, VPS_BRIDGE_PREFIX,
  VPS_NAT_PREFIX, VPS_SERVER, VPS_TOKEN, VPS_RECLAIM_THRESHOLD_MB, VPS_AGENT_TLS_DIR,
  VPS_PKI_DIR
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from vpshost.errors import UsageError

DEFAULT_FILE = Path("/etc/vpshost/config.toml")


@dataclass
class NetworkConfig:
    subnet: str = "10.88.0.0/16"
    subnet6: str = ""  # e.g. "fd88::/64"; empty means IPv4 only
    # Each bridge serves one segment of the subnet, so no bridge nears the kernel's
    # 1023-port limit; guests on different segments are routed by the host.
    segment_prefixlen: int = 22
    bridge_prefix: str = "vpsbr"
    nat: bool = True
    # Name of the nftables table; tests use their own so they never touch the demo's.
    nft_table: str = "vpshost"


@dataclass
class ServerConfig:
    url: str = ""  # when set, the CLI talks to this server instead of working locally
    token: str = ""
    listen: str = "127.0.0.1:8420"


@dataclass
class ContainerConfig:
    idmap_base: int = 100000
    idmap_size: int = 65536
    lxcfs_dir: str = "/var/lib/lxcfs"
    stop_timeout: float = 10.0


@dataclass
class ClusterConfig:
    # Routed guest networks: the control plane's host routes each guest's /32 to the
    # host that runs it, and moves the route when the guest migrates (hosts then keep
    # their own bridges and gateways, as OpenVZ's routed venet did).
    route_guests: bool = False
    # Whether placement may choose the control plane's own host ("local") as well as
    # the registered hosts. A dedicated control plane turns this off.
    place_local: bool = True


@dataclass
class AgentConfig:
    """Mutual TLS between the control plane and its agents (vpshost/agent/pki.py)."""

    # On a host: serve HTTPS from this directory (agent.crt, agent.key, ca.crt, as
    # `vps pki issue` writes it) and require a client certificate from that CA.
    # Empty: plain HTTP with the shared secret only.
    tls_dir: str = ""
    # On the control plane: the cluster CA and its client certificate; empty means
    # <state_dir>/pki.
    pki_dir: str = ""
    # Once the control plane has a cluster CA, `vps host add` refuses http:// agents
    # unless this is true.
    allow_http: bool = False


@dataclass
class Ratios:
    """How far one guest type may oversell a host: committed / physical."""

    vcpu: float = 4.0
    memory: float = 1.0
    disk: float = 1.0


@dataclass
class OvercommitConfig:
    container: Ratios = field(default_factory=Ratios)
    vm: Ratios = field(default_factory=Ratios)
    xen: Ratios = field(default_factory=Ratios)

    def for_type(self, kind: str) -> Ratios:
        ratios: Ratios = getattr(self, kind, Ratios())
        return ratios


@dataclass
class ReclaimConfig:
    """Balloon reclaim of idle VMs when host memory runs short (vpshost/service/reclaim.py)."""

    free_threshold_mb: int = 1024  # reclaim when MemAvailable falls below this
    idle_cpu_pct: float = 10.0  # a VM using less CPU than this over the window is idle
    window_s: float = 10.0
    floor_pct: int = 50  # shrink to this share of the plan's memory ...
    floor_min_mb: int = 64  # ... but never below this
    interval_s: float = 30.0  # how often `vps serve` runs a pass; 0 disables it
    ksm: bool = True  # switch KSM on while VMs run (identical pages merged)


@dataclass
class Config:
    state_dir: Path = Path("/var/lib/vpshost")
    cache_dir: Path = Path("/var/cache/vpshost")
    db_url: str = ""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    overcommit: OvercommitConfig = field(default_factory=OvercommitConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / 'vpshost.db'}"

    @property
    def guests_dir(self) -> Path:
        return self.state_dir / "guests"

    @property
    def images_dir(self) -> Path:
        return self.cache_dir / "images"

    @property
    def pki_dir(self) -> Path:
        return Path(self.agent.pki_dir) if self.agent.pki_dir else self.state_dir / "pki"


_ENV: dict[str, tuple[str, ...]] = {
    "VPS_STATE_DIR": ("state_dir",),
    "VPS_CACHE_DIR": ("cache_dir",),
    "VPS_DB_URL": ("db_url",),
    "VPS_SUBNET": ("network", "subnet"),
    "VPS_SUBNET6": ("network", "subnet6"),
    "VPS_BRIDGE_PREFIX": ("network", "bridge_prefix"),
    "VPS_NAT_TABLE": ("network", "nft_table"),
    "VPS_SERVER": ("server", "url"),
    "VPS_TOKEN": ("server", "token"),
    "VPS_RECLAIM_THRESHOLD_MB": ("reclaim", "free_threshold_mb"),
    "VPS_AGENT_TLS_DIR": ("agent", "tls_dir"),
    "VPS_PKI_DIR": ("agent", "pki_dir"),
}


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        if key not in known:
            raise UsageError(f"unknown setting '{where}{key}' in the config file",
                             f"known settings here: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise UsageError(f"setting '{where}{key}' must be a [section]")
            _apply(current, value, f"{where}{key}.")
        elif isinstance(current, Path):
            setattr(obj, key, Path(value))
        else:
            setattr(obj, key, _coerce(current, value, f"{where}{key}"))


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _coerce(current: Any, value: Any, name: str) -> Any:
    """``value`` (from TOML or an environment string) as the setting's own type."""
    kind = type(current)
    if kind is bool and isinstance(value, str):
        # bool("false") is True: read the words instead
        word = value.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is not bool:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise UsageError(f"setting '{name}' = {value!r} is not a valid {kind.__name__}",
                     "true/false for switches, numbers for sizes and ratios")


def load(path: Path | None = None) -> Config:
    cfg = Config()
    file = path or Path(os.environ.get("VPS_CONFIG", DEFAULT_FILE))
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {file} is not valid TOML: {exc}") from None
        _apply(cfg, data, "")
    for var, keys in _ENV.items():
        if var in os.environ:
            target: Any = cfg
            for k in keys[:-1]:
                target = getattr(target, k)
            _apply(target, {keys[-1]: os.environ[var]}, ".".join(keys[:-1]))
    return cfg
