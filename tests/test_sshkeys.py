"""SSH keys for root: the checks at create (fast) and the install in a real container."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vpshost.errors import UsageError
from vpshost.service import sshkeys


def _key(kind: str = "ssh-ed25519", body: bytes = b"k" * 32) -> str:
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + body
    return f"{kind} {base64.b64encode(blob).decode()}"


def test_good_keys_are_kept_once_and_trimmed() -> None:
    a, b = _key() + " alice@laptop", _key("ssh-rsa")
    assert sshkeys.check([f"  {a}\n", b, a, ""]) == [a, b]
    assert sshkeys.check(a) == [a]


@pytest.mark.parametrize(("key", "needle"), [
    ("hello", "is not a public key"),
    ("ssh-ed25519", "is not a public key"),
    ("ssh-ed25519 !!!notbase64", "does not decode"),
    (_key("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1), "holds a ssh-rsa key"),
    (_key() + " it's mine", "comment has characters"),
    (_key() + " $(reboot)", "comment has characters"),
])
def test_bad_keys_are_refused_with_the_reason(key: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as err:
        sshkeys.check([key])
    assert "id_ed25519.pub" in (err.value.hint or "") or "letters" in (err.value.hint or "")


def test_not_a_list_and_too_many() -> None:
    with pytest.raises(UsageError, match="must be a list"):
        sshkeys.check({"k": 1})
    with pytest.raises(UsageError, match="at most 16"):
        sshkeys.check([_key(body=bytes([i]) * 32) for i in range(17)])


def test_install_script_is_idempotent(tmp_path: Path) -> None:
    """The script, run twice by a real sh against a fake root, adds each key once."""
    keys = [_key() + " a@b", _key("ssh-rsa")]
    script = sshkeys.install_script(keys).replace("/root", str(tmp_path / "root"))
    for _ in range(2):
        subprocess.run(["sh", "-c", script], check=True)
    f = tmp_path / "root" / ".ssh" / "authorized_keys"
    assert f.read_text().splitlines() == keys
    assert f.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root" / ".ssh").stat().st_mode & 0o777 == 0o700


@pytest.mark.lxc
def test_a_container_gets_root_keys_at_every_start(vps_env: Any, tmp_path: Path) -> None:
    """Through the real CLI: --ssh-key takes a .pub file; a restart does not repeat it."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t@vps",
                    "-f", str(tmp_path / "k")], check=True)
    pub = (tmp_path / "k.pub").read_text().strip()
    name = vps_env.unique("ssh")
    vps_env._mine.append(name)
    r = vps_env.cli("create", name, "--image", "busybox", "--memory", "64M", "--disk",
                    "64M", "--ssh-key", str(tmp_path / "k.pub"), "--start")
    assert r.returncode == 0, r.stderr
    assert vps_env.ok(name, "cat /root/.ssh/authorized_keys").splitlines() == [pub]
    assert vps_env.ok(name, "stat -c %a /root/.ssh/authorized_keys").strip() == "600"
    assert vps_env.cli("restart", name).returncode == 0
    assert vps_env.ok(name, "cat /root/.ssh/authorized_keys").splitlines() == [pub]
    bad = vps_env.cli("create", vps_env.unique("ssh"), "--ssh-key", "ssh-ed25519 nope")
    assert bad.returncode == 2 and "SSH key 1" in bad.stderr, bad.stderr
    vps_env.remove(name)
