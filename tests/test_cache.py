"""Stage cache primitives: keys, atomic writes, resumable JSONL after a torn write."""

import os

import pytest

from rlsft.cache import ResumableJsonl, atomic_dir, atomic_write_json, stage_key


def test_stage_key_is_order_independent_and_sensitive():
    assert stage_key(a=1, b={"x": 2, "y": 3}) == stage_key(b={"y": 3, "x": 2}, a=1)
    assert stage_key(a=1) != stage_key(a=2)


def test_resumable_jsonl_drops_a_torn_line(tmp_path):
    store = ResumableJsonl(tmp_path)
    store.append([{"id": 1}, {"id": 2}])
    with open(store.partial, "a") as fh:
        fh.write('{"id": 3, "te')  # a crash in the middle of a write
    assert [x["id"] for x in store.read()] == [1, 2]
    store.append([{"id": 3}])
    assert [x["id"] for x in store.read()] == [1, 2, 3]
    assert not store.complete
    store.finish()
    assert store.complete and not store.partial.exists()
    with pytest.raises(RuntimeError):
        store.append([{"id": 4}])


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(ZeroDivisionError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("half")
            1 / 0
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
