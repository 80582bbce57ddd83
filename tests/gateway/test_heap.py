"""`comity serve` freezes what start-up allocated, so that full collections stop walking it (docs/performance.md)."""

from __future__ import annotations

import gc

from gateway.app import settle_heap


def test_settle_heap_takes_what_exists_out_of_full_collections() -> None:
    marker = [object() for _ in range(100)]
    gc.collect()  # survivors of a full collection sit in the oldest generation, which every full collection walks
    assert any(obj is marker for obj in gc.get_objects(generation=2))
    try:
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() >= len(marker)
        assert not any(obj is marker for obj in gc.get_objects(generation=2))
        later = [object()]
        gc.collect()
        assert any(obj is later for obj in gc.get_objects(generation=2))  # what comes after is collected as before
    finally:
        gc.unfreeze()
