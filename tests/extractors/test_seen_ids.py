"""The driver's seen-id structure: same answers as a set, memory bounded by runs, not ids."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ags_etl.extractors.driver import SeenIds


def test_same_answers_as_a_python_set_on_scattered_ids() -> None:
    rng = random.Random(3)
    seen = SeenIds()
    reference: set[int] = set()
    for _ in range(300):
        page = [rng.choice([rng.randrange(0, 2000), rng.randrange(0, 2**53)]) for _ in range(rng.randrange(0, 40))]
        fresh = seen.add(np.asarray(page, dtype=np.int64))
        expected = []
        for oid in page:
            expected.append(oid not in reference)
            reference.add(oid)
        assert fresh.tolist() == expected
    assert len(seen) == len(reference)
    probe = np.asarray(list(reference)[:500] + [2**53 + 1, 5_000_000], dtype=np.int64)
    assert seen.contains(probe).tolist() == [int(p) in reference for p in probe]


def test_a_million_dense_oids_out_of_order_take_a_few_hundred_bytes() -> None:
    seen = SeenIds()
    pages = [np.arange(start, start + 2000, dtype=np.int64) for start in range(1, 1_000_001, 2000)]
    random.Random(1).shuffle(pages)  # pages complete in any order
    dropped = 0
    for page in pages:
        page = page[::-1].copy()
        dropped += int((~seen.add(page)).sum())
        dropped += int((~seen.add(page[:10])).sum())  # a repeat of part of a page
    assert len(seen) == 1_000_000
    assert dropped == 10 * len(pages)
    assert seen.runs == 1
    assert seen.nbytes < 1024, "a set of a million ints would take tens of MB"


def test_scattered_ids_cost_at_most_sixteen_bytes_each_and_levels_stay_few() -> None:
    seen = SeenIds()
    ids = np.arange(0, 200_000, dtype=np.int64) * 7  # gaps everywhere: one run per id
    for chunk in np.array_split(ids, 100):
        seen.add(chunk)
    assert seen.nbytes <= 16 * len(ids)
    assert len(seen._levels) <= 2 * int(np.log2(100)) + 1


def test_negative_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        SeenIds().add(np.array([-1], dtype=np.int64))
