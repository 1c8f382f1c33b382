"""Per-user rate limit of events: a token bucket.

Each user has a bucket of at most `burst` tokens that refills at `rate` tokens per second; an event takes one.
An event that finds the bucket empty is refused (HTTP 429) and told when the next token comes (Retry-After).
Retries of an event already recorded are answered as duplicates and take no token.

With Redis the bucket is a hash ``rate:{user}`` {tokens, ts} updated inside the event script (events.py, with
Redis's clock): every worker and host shares one bucket per user, and a refusal costs no extra round trip.
While Redis is down (and without Redis) each process keeps its own buckets (`LocalBuckets`): the limit then
applies per worker, so N workers accept up to N times the rate until Redis is back.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

# A Lua function for the event script: 0 when a token was taken, else milliseconds until the next token.
# `now` is in ms (Redis TIME). The hash expires once it would have refilled anyway.
BUCKET_LUA = """
local function take_token(key, rate, burst, now)
  if rate <= 0 then return 0 end
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then return math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
  redis.call('HSET', key, 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  return 0
end
"""


class LocalBuckets:
    """The same bucket as `BUCKET_LUA`, in this process (LRU-bounded to `max_users` users)."""

    def __init__(self, rate: float, burst: int, max_users: int):
        self.rate = rate
        self.burst = float(burst)
        self.max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, at)

    def take(self, user: str, now: float | None = None) -> float:
        """Take a token of `user`: 0.0 when allowed, else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(user, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens < 1:
            self._buckets[user] = (tokens, now)
            return max(0.001, (1 - tokens) / self.rate)
        self._buckets[user] = (tokens - 1, now)
        while len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return 0.0


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110); never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))
