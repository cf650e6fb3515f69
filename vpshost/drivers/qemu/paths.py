"""Every file a VM has on the host, derived from the guest's own directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpshost.errors import UsageError

_UNIX_PATH_MAX = 107


@dataclass(frozen=True)
class VmPaths:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def agent(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def info(self) -> Path:
        """Written at create: marks the dir as a VM's and records its name and image."""
        return self.dir / "vm.json"

    def sockets(self) -> list[Path]:
        return [self.qmp, self.console, self.agent]

    def check(self) -> VmPaths:
        longest = max(len(str(p)) for p in self.sockets())
        if longest > _UNIX_PATH_MAX:
            raise UsageError(f"guest directory {self.dir} is too long for unix sockets",
                             f"keep socket paths under {_UNIX_PATH_MAX} characters")
        return self
