"""Group-by on a small number of hash shards instead of on the key itself.

``groupby(key).map_groups(fn)`` calls ``fn`` once per distinct key, which is one call per document
when keys are mostly unique (text hashes, band keys, ids). Hashing the key into a few shards and
grouping by shard hands ``fn`` whole shards, which the llm.data functions already handle: they
group by the real key themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial

import pyarrow as pa
import ray.data

SHARD = "_shard"


def stable_shard(value: str, shards: int) -> int:
    """A shard number that is the same in every process (unlike Python's ``hash``)."""
    return (
        int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little") % shards
    )


def _add_shard(batch: pa.Table, key: str, shards: int) -> pa.Table:
    values = [stable_shard(str(v), shards) for v in batch.column(key).to_pylist()]
    return batch.append_column(SHARD, pa.array(values, type=pa.int32()))


def _without_shard(fn: Callable[[pa.Table], pa.Table]) -> Callable[[pa.Table], pa.Table]:
    def run(group: pa.Table) -> pa.Table:
        return fn(group.drop_columns([SHARD]))

    return run


def map_shards(
    ds: ray.data.Dataset, key: str, fn: Callable[[pa.Table], pa.Table], shards: int
) -> ray.data.Dataset:
    """``fn`` over the rows of ``ds`` split into ``shards`` groups by a stable hash of ``key``.

    All rows with equal ``key`` meet in one call, so ``fn`` sees every member of every key group.
    """
    sharded = ds.map_batches(partial(_add_shard, key=key, shards=shards), batch_format="pyarrow")
    return sharded.groupby(SHARD, num_partitions=shards).map_groups(
        _without_shard(fn), batch_format="pyarrow"
    )
