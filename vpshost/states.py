"""Instance states and the one table of which operation may run in which state."""

from __future__ import annotations

from enum import StrEnum

from vpshost.errors import Conflict


class State(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"
    MIGRATING = "migrating"
    DELETING = "deleting"
    ERROR = "error"


# Transient states: an operation is in flight. Finding one at start-up means a crash
# interrupted it, so reconcile asks the driver what is really there.
TRANSIENT = frozenset({State.CREATING, State.STARTING, State.STOPPING,
                       State.MIGRATING, State.DELETING})

S = State
# operation -> (states it may start from, transient state while it runs, state on success)
OPERATIONS: dict[str, tuple[frozenset[State], State | None, State | None]] = {
    "start": (frozenset({S.STOPPED}), S.STARTING, S.RUNNING),
    "stop": (frozenset({S.RUNNING, S.PAUSED}), S.STOPPING, S.STOPPED),
    "restart": (frozenset({S.RUNNING}), S.STARTING, S.RUNNING),
    "pause": (frozenset({S.RUNNING}), None, S.PAUSED),
    "resume": (frozenset({S.PAUSED}), None, S.RUNNING),
    "delete": (frozenset({S.STOPPED, S.ERROR}), S.DELETING, S.DELETING),
    # resize, snapshot and restore leave the state as it was (the last field is unused)
    "resize": (frozenset({S.STOPPED, S.RUNNING}), None, S.STOPPED),
    "snapshot": (frozenset({S.STOPPED, S.RUNNING, S.PAUSED}), None, S.STOPPED),
    "restore": (frozenset({S.STOPPED, S.RUNNING, S.PAUSED}), None, S.STOPPED),
    # None as the end state: it ends as it began (a stopped guest moves stopped)
    "migrate": (frozenset({S.STOPPED, S.RUNNING}), S.MIGRATING, None),
    "exec": (frozenset({S.RUNNING}), None, S.RUNNING),
    "console": (frozenset({S.RUNNING, S.PAUSED}), None, S.RUNNING),
}

_HINTS = {
    S.RUNNING: "stop it first with `vps stop NAME`",
    S.STOPPED: "start it first with `vps start NAME`",
    S.PAUSED: "resume it first with `vps resume NAME`",
    S.ERROR: "delete it with `vps delete NAME` or restart the server to reconcile",
}


def check(operation: str, current: State | str,
          name: str) -> tuple[State | None, State | None]:
    """Refuse ``operation`` unless the table allows it from ``current``.

    Returns (transient state to record while it runs, state on success).
    """
    allowed, transient, final = OPERATIONS[operation]
    state = State(current)
    if state not in allowed:
        if state in TRANSIENT:
            hint = "another operation is in progress; wait for it to finish"
        else:
            hint = _HINTS.get(state, "")
        ok = ", ".join(sorted(allowed))
        raise Conflict(f"cannot {operation} '{name}': it is {state} "
                       f"({operation} needs it {ok})", hint)
    return transient, final
