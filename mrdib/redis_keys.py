"""The Redis key layout of the service and of `mrdib retrain`, one place for both (like the artifact manifest),
and the clients that reach a single Redis or a Redis Cluster.

A Redis Cluster runs a script, a MULTI or a multi-key command only when every key it names hashes to the same
slot (else CROSSSLOT). Every key therefore carries a *hash tag* (the text between the first ``{`` and ``}``,
the only part the slot is computed from), chosen so that each script touches one slot:

* users are sharded over ``shards`` event streams: ``shard = crc32(user id) % shards``, and the shard's tag
  ``{u<shard>}`` is carried by the shard's stream and by every key of each of its users::

      <stream>:{u3}                 stream of shard 3 (what `mrdib retrain` reads)
      <prefix>{u3}:uvec:<user>      cached user state, one field per model version
      <prefix>{u3}:uev:<user>       the user's event counter (guards cache writes)
      <prefix>{u3}:hist:<user>      the user's recent item ids
      <prefix>{u3}:evt:<user>       the event ids the user sent (de-duplication per (user, event id))
      <prefix>{u3}:rate:<user>      the user's event rate-limit bucket

  so the event script (dedupe, rate limit, stream, history, cache, counter) runs on one node, and the events of one user
  stay in order in one stream. More streams than masters spread the write load (one stream is one hot key on
  one node); the default 16 suits a few masters, see docs/SCALING.md for larger clusters.
* admin item changes share the tag ``{items}``: ``<prefix>{items}:side``, ``:deleted``, ``:ver``.

The same layout serves a single Redis (tags are then plain characters), so one code path and one test suite
cover both modes. Neither the key prefix nor the stream name may hold braces: a brace there would become the
tag instead. Before this layout the service wrote one stream (``<stream>`` itself, no tag) and untagged item
keys (``<prefix>items:side`` ...): `legacy_item_keys` names them for the migration (service/items.py), and
`mrdib retrain` keeps reading the old stream from its recorded position (README, "Redis Cluster").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_STREAM = "mrdib:events"
DEFAULT_SHARDS = 16
RedisMode = Literal["single", "cluster"]


def check_name(what: str, value: str) -> str:
    """`value` unless it holds a brace (it would become the key's hash tag); ValueError naming `what`."""
    if "{" in value or "}" in value:
        raise ValueError(f"{what} {value!r} must not contain '{{' or '}}': Redis Cluster would hash keys by it")
    return value


def shard_of(user_id: str, shards: int) -> int:
    """The event shard of a user: stable across processes, hosts and versions (CRC-32 of the UTF-8 id)."""
    return zlib.crc32(user_id.encode("utf-8")) % shards


@dataclass(frozen=True)
class KeyLayout:
    """Key names under one deployment's key `prefix`, event `stream` base name and shard count."""

    prefix: str = ""
    stream: str = DEFAULT_STREAM
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        check_name("key prefix", self.prefix)
        check_name("stream name", self.stream)
        if self.shards < 1:
            raise ValueError(f"stream shards must be >= 1, got {self.shards}")

    @staticmethod
    def tag(shard: int) -> str:
        return f"{{u{shard}}}"

    def shard(self, user_id: str) -> int:
        return shard_of(user_id, self.shards)

    def shard_stream(self, shard: int) -> str:
        return f"{self.stream}:{self.tag(shard)}"

    def streams(self) -> list[str]:
        """Every shard's stream, in shard order."""
        return [self.shard_stream(s) for s in range(self.shards)]

    def user_stream(self, user_id: str) -> str:
        return self.shard_stream(self.shard(user_id))

    def user_key(self, kind: str, user_id: str) -> str:
        """A per-user key in the user's shard slot (`kind`: uvec, uev, hist, evt, rate, ...); the user id is the
        last part, so two users' keys can never be the same."""
        return f"{self.prefix}{self.tag(self.shard(user_id))}:{kind}:{user_id}"

    def item_keys(self) -> tuple[str, str, str]:
        """(side items hash, deleted ids set, change counter): one slot, so each item script runs on one node."""
        return f"{self.prefix}{{items}}:side", f"{self.prefix}{{items}}:deleted", f"{self.prefix}{{items}}:ver"

    def legacy_item_keys(self) -> tuple[str, str, str]:
        """Where the item keys were before hash tags (single Redis only; migrated by the service at start)."""
        return f"{self.prefix}items:side", f"{self.prefix}items:deleted", f"{self.prefix}items:ver"

    @property
    def legacy_stream(self) -> str:
        """The one stream of the layout before sharding: `mrdib retrain` still reads it from its position."""
        return self.stream

    @property
    def inval_channel(self) -> str:
        """Pub/sub channel naming users whose cached state just became stale (PUBLISH reaches every node of a
        cluster, so a subscriber on any node hears every shard's script)."""
        return f"{self.prefix}uinval"


def sync_client(url: str, mode: RedisMode = "single", **kwargs: Any) -> Any:
    """A blocking redis-py client: `redis.Redis` or, in cluster mode, `redis.RedisCluster` (`url` names any
    node; the others are discovered). Used by `mrdib retrain`, benchmarks and tests."""
    import redis

    if mode == "cluster":
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)
