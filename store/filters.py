"""Blocked Bloom filters over the sealed key buckets of either backend: which buckets may hold a key, in one
numpy gather.

Each sealed bucket gets a filter of `words` 64-bit words (a power of two, the same for every bucket of a
store: WORDS, SQLite's, for buckets of 100,000 keys; PostgreSQL's buckets are ten times that, and so are its
filters); a key sets BITS bits of one word, both
taken from its hash (already uniform: no more hashing). All filters have the same size, so a key's word is
at the same index in every filter, and checking a batch against every bucket is one gather from a matrix
(buckets x words) and one compare. About 20 bits a key at BUCKET_KEYS keys a bucket: a key that is in no
bucket passed a given full filter 162 times in 100,000 (tests/store/test_key_buckets.py), each time costing
one primary-key seek that finds it is not there: at 100 buckets (10,000,000 keys), 0.16 seeks per new key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

WORDS = 1 << 15  # 256 KiB a bucket of 100,000 keys: 25 MiB for 10,000,000 keys
BITS = 8

Words = npt.NDArray[np.uint64]


def _parts(hashes: Sequence[bytes], words: int) -> tuple[npt.NDArray[np.intp], Words]:
    raw = np.frombuffer(b"".join(hashes), dtype="<u8").reshape(-1, 2)
    index = (raw[:, 0] & np.uint64(words - 1)).astype(np.intp)
    spread = raw[:, 1]
    mask = np.zeros(len(hashes), dtype=np.uint64)
    for i in range(BITS):
        mask |= np.uint64(1) << ((spread >> np.uint64(6 * i)) & np.uint64(63))
    return index, mask


def build(hashes: Sequence[bytes], words: int = WORDS) -> bytes:
    """The filter of a bucket holding `hashes`, as the store keeps it."""
    filter_words = np.zeros(words, dtype=np.uint64)
    if hashes:
        index, mask = _parts(hashes, words)
        np.bitwise_or.at(filter_words, index, mask)
    return filter_words.astype("<u8").tobytes()


class Filters:
    """The writer's filters of every sealed bucket, newest last."""

    def __init__(self, words: int = WORDS) -> None:
        self.words = words
        self.buckets: list[int] = []
        self._matrix: Words = np.zeros((0, words), dtype=np.uint64)

    def add(self, bucket: int, filter_blob: bytes) -> None:
        words = np.frombuffer(filter_blob, dtype="<u8").astype(np.uint64)
        if words.shape != (self.words,):
            raise ValueError(f"the filter of key bucket {bucket} has {words.size} words, not {self.words}")
        self.buckets.append(bucket)
        self._matrix = np.vstack([self._matrix, words[np.newaxis, :]])

    def remove(self, bucket: int) -> None:
        row = self.buckets.index(bucket)
        del self.buckets[row]
        self._matrix = np.delete(self._matrix, row, axis=0)

    def candidates(self, hashes: Sequence[bytes]) -> dict[int, list[int]]:
        """bucket -> positions in `hashes` its filter lets through, for every sealed bucket."""
        if not self.buckets or not hashes:
            return {}
        index, mask = _parts(hashes, self.words)
        hits = (self._matrix[:, index] & mask) == mask
        found: dict[int, list[int]] = {}
        for row, position in zip(*np.nonzero(hits), strict=True):
            found.setdefault(self.buckets[int(row)], []).append(int(position))
        return found
