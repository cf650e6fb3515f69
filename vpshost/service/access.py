"""Who is asking: tenants and admins, and the API tokens that say so."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "vps_"


@dataclass(frozen=True)
class Caller:
    tenant: str
    admin: bool = False

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant


LOCAL_ADMIN = Caller("default", admin=True)  # the local CLI, run by root on the host


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
