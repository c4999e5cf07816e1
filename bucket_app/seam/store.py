"""Faust's RocksDB store, read and written a partition and a batch at a time.

Faust's store (``faust.stores.rocksdb.Store``) writes one key at a time and has no per-partition
key iterator; the counting code writes whole batches straight into a partition's database with
the store's own encoders (:class:`bucket_app.kafka.changelog.TableBatch`) and sweeps one partition's
keys. These functions are the only places that reach into the store for that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

Codec = tuple[Callable[[Any], bytes], Callable[[Any], bytes], Callable[[bytes], Any]]


def partition_db(store: Any, partition: int) -> Any:
    """The RocksDB database (rocksdict ``Rdict``) of ``partition``, opened if need be."""
    return store._db_for_partition(partition)


def codec(store: Any) -> Codec:
    """The store's ``(encode_key, encode_value, decode_value)``: the bytes Faust writes."""
    return store._encode_key, store._encode_value, store._decode_value


def key_index(store: Any) -> MutableMapping[bytes, int]:
    """The store's in-memory map of raw key to partition.

    Faust adds every key it sets or finds and never forgets one; it is only a shortcut (a key
    missing from it is looked up in every partition), so bucket_app's writes add nothing to it
    and its deletes remove the key, which must not point at a database that no longer has it.
    """
    return store._key_index  # type: ignore[no-any-return]


def partition_keys(store: Any, partition: int) -> Iterator[tuple[bytes, Any]]:
    """``(raw key, decoded key)`` of every key in ``partition``'s database, Faust's own
    bookkeeping key (the changelog offset) aside."""
    decode = store._decode_key
    for raw_key in store._visible_keys(partition_db(store, partition)):
        yield raw_key, decode(raw_key)


def open_dbs(store: Any) -> dict[int, Any]:
    """The partitions' RocksDB databases (rocksdict ``Rdict``) the store has open now."""
    return dict(store._dbs)
