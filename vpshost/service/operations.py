"""API bookkeeping: tokens and the long operations clients poll."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from vpshost.errors import NotFound
from vpshost.models import check_name
from vpshost.service.access import Caller, digest, new_secret
from vpshost.service.base import ServiceBase
from vpshost.store.schema import (
    Operation,
    Token,
    utcnow,
)


class OperationsMixin(ServiceBase):
    """Tokens are stored as digests; operations as rows with a status."""

    def token_create(self, tenant: str, admin: bool = False) -> str:
        check_name(tenant)
        secret = new_secret()
        with self.db.session() as s:
            s.add(Token(tenant=tenant, admin=admin, digest=digest(secret)))
        return secret

    def authenticate(self, secret: str) -> Caller | None:
        with self.db.session() as s:
            tok = s.scalar(select(Token).where(Token.digest == digest(secret)))
            return Caller(tok.tenant, tok.admin) if tok else None

    def op_begin(self, kind: str, instance: str | None, caller: Caller) -> str:
        op_id = str(uuid.uuid4())
        with self.db.session() as s:
            s.add(Operation(id=op_id, kind=kind, instance=instance, tenant=caller.tenant))
        return op_id

    def op_finish(self, op_id: str, error: str | None = None,
                  result: dict[str, Any] | None = None) -> None:
        with self.db.session() as s:
            s.execute(update(Operation).where(Operation.id == op_id).values(
                status="failure" if error else "success", error=error, result=result,
                finished_at=utcnow()))

    def op_progress(self, op_id: str, sample: dict[str, Any]) -> None:
        """A running operation's latest progress (a live move's sample), for pollers."""
        with self.db.session() as s:
            s.execute(update(Operation).where(Operation.id == op_id,
                                               Operation.status == "running")
                      .values(result={"progress": sample}))

    def op_get(self, op_id: str, caller: Caller) -> dict[str, Any]:
        with self.db.session() as s:
            op = s.get(Operation, op_id)
            if op is None or not caller.may_see(op.tenant):
                raise NotFound(f"no operation '{op_id}'")
            return {"id": op.id, "kind": op.kind, "instance": op.instance,
                    "status": op.status, "error": op.error, "result": op.result,
                    "created_at": op.created_at.isoformat() + "Z",
                    "finished_at": op.finished_at.isoformat() + "Z" if op.finished_at
                    else None}
