"""The tables. Alembic migrations in ``migrations/`` create and change them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    host: Mapped[str] = mapped_column(String(64), default="local")
    state: Mapped[str] = mapped_column(String(16))
    image: Mapped[str] = mapped_column(String(64))
    privileged: Mapped[bool] = mapped_column(default=False)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    swap_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    cpu_cap_pct: Mapped[int] = mapped_column(Integer, default=0)
    cpu_weight: Mapped[int] = mapped_column(Integer, default=100)
    io_read_bps: Mapped[int] = mapped_column(Integer, default=0)
    io_write_bps: Mapped[int] = mapped_column(Integer, default=0)
    io_read_iops: Mapped[int] = mapped_column(Integer, default=0)
    io_write_iops: Mapped[int] = mapped_column(Integer, default=0)
    bandwidth_mbit: Mapped[int] = mapped_column(Integer, default=0)
    max_procs: Mapped[int] = mapped_column(Integer, default=0)
    ip: Mapped[str | None] = mapped_column(String(64), unique=True)
    ip6: Mapped[str | None] = mapped_column(String(64), unique=True)
    mac: Mapped[str | None] = mapped_column(String(17))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text)
    # pid of the process running the operation that put it in a transient state; a
    # dead pid there means a crash, which reconcile repairs
    busy_pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    ports: Mapped[list[PortForward]] = relationship(
        back_populates="instance", cascade="all, delete-orphan")


class Host(Base):
    """A machine whose agent performs driver operations (``local`` is implicit)."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | draining
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column()


class PortForward(Base):
    __tablename__ = "port_forwards"
    __table_args__ = (UniqueConstraint("proto", "host_port"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    proto: Mapped[str] = mapped_column(String(4), default="tcp")
    host_port: Mapped[int] = mapped_column(Integer)
    guest_port: Mapped[int] = mapped_column(Integer)

    instance: Mapped[Instance] = relationship(back_populates="ports")


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("instance_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    with_memory: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    instance: Mapped[str | None] = mapped_column(String(64), index=True)
    tenant: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(default=False)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Operation(Base):
    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    instance: Mapped[str | None] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
