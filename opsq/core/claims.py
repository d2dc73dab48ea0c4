"""Leases in Redis that know their holder: one process at a time does a piece of work.

A claim is a key set with ``NX`` and an expiry (the lease), whose value names the
holder: ``<owner> <scope> <pid> <nonce>``. The owner is what the caller works for (a
Celery task id), the scope names where a pid means one process (host name, kernel
boot and pid namespace), and the nonce makes every attempt its own holder.

Why not "the same task id may take over": Celery with the Redis broker runs one
message twice at the same time when it stays unacknowledged longer than the visibility
timeout (kombu restores it while the first worker still runs it; ``acks_late`` keeps a
task unacknowledged until it returns), and both copies carry the same task id. Letting
the second in because its id matches is what sent a notification twice.

A claim is taken over before its lease runs out only when its holder is provably gone:
same scope, and no process with its pid (``kill(pid, 0)`` says ``ESRCH``). That is the
case of a worker killed with -9 and its task redelivered on the same host. A holder in
another scope, or a live one, is waited for until the lease expires. Release and
take-over compare the holder first (a Lua script each), so a holder whose lease ran out
never deletes its successor's claim.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from pathlib import Path

import redis

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_SWAP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""


@functools.cache
def process_scope() -> str:
    """Where a pid names one process: host name, kernel boot id, pid namespace."""
    parts = [socket.gethostname() or "-"]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("no-proc")  # not Linux: only the lease protects
    return "/".join(part.replace(" ", "_") for part in parts)


def holder_token(owner: str, *, scope: str | None = None, pid: int | None = None) -> str:
    """A claim value for *owner* held by this process (or the given scope and pid)."""
    scope = process_scope() if scope is None else scope
    return f"{owner} {scope} {os.getpid() if pid is None else pid} {secrets.token_hex(6)}"


def holder_gone(token: str) -> bool:
    """True only when *token*'s process is known to have ended (same scope, no such pid)."""
    parts = token.rsplit(" ", 3)
    if len(parts) != 4 or parts[1] != process_scope() or not parts[2].isdigit():
        return False  # another host, or a value of an older opsq: wait for the lease
    pid = int(parts[2])
    if pid == os.getpid():
        return False  # this process: perhaps another thread of it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class ClaimHeld(Exception):
    """Another live (or unknown) holder has the claim for *ttl* more seconds."""

    def __init__(self, holder: str, ttl: float) -> None:
        super().__init__(f"claimed by {holder.rsplit(' ', 3)[0]!r} for {ttl:g}s more")
        self.holder = holder
        self.ttl = ttl


def acquire(client: redis.Redis[str], key: str, token: str, lease_s: int) -> str | None:
    """Take the claim *key* for *token*; return the holder taken over from (None if the
    claim was free). Raise :class:`ClaimHeld` when a live or unknown holder has it."""
    for _ in range(3):  # the holder may release between SET NX and GET
        if client.set(key, token, nx=True, ex=lease_s):
            return None
        holder = client.get(key)
        if holder is None:
            continue
        if holder_gone(holder) and client.register_script(_SWAP)(
            keys=[key], args=[holder, token, lease_s]
        ):
            return holder
        if not holder_gone(holder):
            raise ClaimHeld(holder, float(max(1, client.ttl(key))))
    raise ClaimHeld(str(client.get(key) or "?"), float(max(1, client.ttl(key))))


def release(client: redis.Redis[str], key: str, token: str) -> bool:
    """Delete the claim if *token* still holds it."""
    return bool(client.register_script(_RELEASE)(keys=[key], args=[token]))
