"""Stream retention: trim what every consumer group has finished with, nothing else.

``XTRIM MINID <id>`` deletes entries with ids below ``<id>``. The id is the oldest
entry some group still needs: for each group, the smaller of its oldest pending
(delivered, unacknowledged) entry and the entry after its last-delivered-id; then the
minimum over all groups. So an entry is deleted only once every group has
acknowledged it, and a shipper that crashed holding entries keeps them until another
shipper claims and acknowledges them. (A length cap, ``MAXLEN``, would delete
unacknowledged entries: only the agent applies one, and only when the user sets it.)

The computation and the trim run in one Lua script so no group can move (XGROUP
SETID, a new group) between reading the groups' progress and trimming. Ids are
compared as decimal strings (length, then text) because Lua numbers are doubles.

Redis itself must never evict the stream: run it with ``maxmemory-policy noeviction``
so a full Redis refuses the agent's XADD (backpressure) instead of dropping data.
"""

from __future__ import annotations

import redis

_TRIM_SCRIPT = """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {ms, seq}
end
local function num_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  if a[1] ~= b[1] then return num_less(a[1], b[1]) end
  return num_less(a[2], b[2])
end
local keep = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local need = split(info['last-delivered-id'])
  need[2] = string.format('%.0f', tonumber(need[2]) + 1)
  local pending = redis.call('XPENDING', key, info['name'])
  if pending[1] > 0 then
    local oldest = split(pending[2])
    if less(oldest, need) then need = oldest end
  end
  if keep == nil or less(need, keep) then keep = need end
end
if keep == nil then return 0 end
return redis.call('XTRIM', key, 'MINID', keep[1] .. '-' .. keep[2])
"""


class Retention:
    """Trims one stream at its consumer groups' progress."""

    def __init__(self, client: redis.Redis[bytes], stream: str) -> None:
        self.stream = stream
        self._script = client.register_script(_TRIM_SCRIPT)

    def trim(self) -> int:
        """Delete every entry all groups have acknowledged; return how many went.

        A stream without consumer groups is left alone: nobody has read it yet.
        redis-py errors propagate; the caller translates them (the shipper with its
        ``redis_errors``: :mod:`opsq.core.redis_errors`).
        """
        return int(self._script(keys=[self.stream]))
