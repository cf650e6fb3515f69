"""SSH public keys for a guest's root: checked at create, installed at every start.

Installing through the guest's own exec channel (lxc-attach, the VM's guest agent, the
Xen PV channel) needs nothing from the image beyond a shell, so it works the same for
every type and survives a snapshot restore (the next start puts the keys back).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from vpshost.errors import UsageError

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
# a comment is free text, but it goes into a shell script between single quotes
_COMMENT = re.compile(r"^[\w.@+=:,/ -]*$")
MAX_KEYS = 16
HINT = "give the contents of a public key file, e.g. ~/.ssh/id_ed25519.pub"


def check(keys: object) -> list[str]:
    """The keys, one per line, normalised; a UsageError naming the first bad one."""
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UsageError("ssh_keys must be a list of public keys", HINT)
    out = [k.strip() for k in keys if k.strip()]
    if len(out) > MAX_KEYS:
        raise UsageError(f"{len(out)} SSH keys given; at most {MAX_KEYS}")
    for i, key in enumerate(out, 1):
        _check_one(key, i)
    return list(dict.fromkeys(out))


def _check_one(key: str, i: int) -> None:
    parts = key.split(None, 2)
    what = f"SSH key {i} ({key[:24]}...)" if len(key) > 24 else f"SSH key {i} ({key})"
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise UsageError(f"{what} is not a public key: it must start with one of "
                         f"{', '.join(KEY_TYPES[:3])}, ...", HINT)
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        inner = blob[4:4 + n].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise UsageError(f"{what}: its base64 part does not decode", HINT) from None
    if inner != parts[0]:
        raise UsageError(f"{what}: it says {parts[0]} but holds a {inner} key", HINT)
    if len(parts) == 3 and not _COMMENT.match(parts[2]):
        raise UsageError(f"{what}: its comment has characters vpshost does not accept",
                         "letters, digits, spaces and . @ + = : , / - _ only")


def install_script(keys: list[str]) -> str:
    """A POSIX sh script that adds each key to root's authorized_keys once."""
    lines = ["umask 077", "mkdir -p /root/.ssh", "f=/root/.ssh/authorized_keys",
             'touch "$f"']
    lines += [f"grep -qxF '{k}' \"$f\" || echo '{k}' >> \"$f\"" for k in keys]
    lines += ['chmod 700 /root/.ssh', 'chmod 600 "$f"']
    return "\n".join(lines) + "\n"
