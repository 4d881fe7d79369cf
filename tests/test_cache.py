"""Stage cache primitives: keys, atomic writes and their file modes, seals, the cached-stage helper, resumable JSONL,
content hashes."""

import logging
import os
import stat
import zipfile

import numpy as np
import pytest

from conftest import damage
from rlsft.models import build_tiny_model
from rlsft.cache import (ResumableJsonl, atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, cached,
                         cached_json, cached_npz, content_hash, intact, locked, stage_key, tidy_on_failure)


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


@pytest.fixture
def user_umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("user_umask", [0o022, 0o002, 0o077], indirect=True)
def test_written_files_get_the_mode_open_gives(tmp_path, user_umask):
    """Results and cache entries are readable by whom the umask allows (mkstemp alone gives 0600)."""
    with open(tmp_path / "by_open", "w") as fh:
        fh.write("x")
    os.mkdir(tmp_path / "by_mkdir")
    file_mode, dir_mode = (stat.S_IMODE(os.stat(tmp_path / p).st_mode) for p in ("by_open", "by_mkdir"))
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_bytes(tmp_path / "b.bin", b"x", sealed=True)
    with atomic_path(tmp_path / "c.npz", sealed=True) as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "model", sealed=True) as tmp:
        (tmp / "weights").write_text("w")
        build_tiny_model(layers=1, hidden=16, heads=2, kv_heads=1)[0].save_pretrained(tmp)  # safetensors: 0600 itself
    with locked(tmp_path / "d"):
        pass
    for name in ("a.json", "b.bin", "b.bin.sha256", "c.npz", "c.npz.sha256", "model/weights", "model/SHA256SUMS",
                 "model/model.safetensors", "model/config.json", "d.lock"):
        assert oct(stat.S_IMODE(os.stat(tmp_path / name).st_mode)) == oct(file_mode), name
    assert oct(stat.S_IMODE(os.stat(tmp_path / "model").st_mode)) == oct(dir_mode)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_sealed_entry_is_moved_aside_with_one_warning(tmp_path, how, caplog):
    atomic_write_bytes(tmp_path / "scores.bin", bytes(range(256)) * 4, sealed=True)
    with atomic_dir(tmp_path / "model", sealed=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    assert intact(tmp_path / "scores.bin") and intact(tmp_path / "model")
    damage(tmp_path / "scores.bin", how)
    damage(tmp_path / "model" / "sub" / "weights.bin", how)
    with caplog.at_level(logging.WARNING):
        assert not intact(tmp_path / "scores.bin") and not intact(tmp_path / "model")
    assert len(caplog.records) == 2 and all("moved aside" in r.getMessage() for r in caplog.records)
    left = sorted(p.name.split(".corrupt-")[0] + (".sha256" if p.name.endswith(".sha256") else "")
                  for p in tmp_path.iterdir())
    assert left == ["model", "scores.bin", "scores.bin.sha256"]  # all moved aside, nothing at the old names
    assert not (tmp_path / "scores.bin").exists() and not (tmp_path / "model").exists()
    assert not intact(tmp_path / "scores.bin")  # absent: recompute


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_an_unsealed_npz_is_checked_by_loading_it(tmp_path, how):
    """Entries written before seals existed: the zip CRC of each array catches truncation and flipped bits."""
    np.savez(tmp_path / "old.npz", W=np.arange(4000, dtype=np.float32))
    assert intact(tmp_path / "old.npz")
    damage(tmp_path / "old.npz", how)
    assert not intact(tmp_path / "old.npz") and not (tmp_path / "old.npz").exists()


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("how", ["garbage", "flip"])
def test_resumable_jsonl_keeps_intact_lines_of_a_damaged_file(tmp_path, final, how, caplog):
    store = ResumableJsonl(tmp_path)
    store.append([{"id": i, "ids": [i, 10 * i]} for i in range(5)])
    if final:
        store.finish()
    path = store.final if final else store.partial
    lines = path.read_text().splitlines(keepends=True)
    if how == "garbage":
        lines[2] = "%%% not json %%%\n"
    else:  # a digit changed by one bit: still valid JSON, only the checksum notices
        lines[2] = lines[2].replace("[2, 20]", "[2, 30]")
        assert "[2, 30]" in lines[2]
    path.write_text("".join(lines))
    with caplog.at_level(logging.WARNING):
        assert [x["id"] for x in store.read()] == [0, 1, 3, 4]
    assert len(caplog.records) == 1 and "1 of 5 lines damaged" in caplog.records[0].getMessage()
    assert not store.complete and [x["id"] for x in store.read()] == [0, 1, 3, 4]  # repaired: no second warning
    assert len(caplog.records) == 1
    store.append([{"id": 2, "ids": [2, 20]}])  # only the damaged item is redone
    store.finish()
    assert sorted(x["id"] for x in store.read()) == list(range(5))
    assert len([p for p in tmp_path.glob("records.*jsonl.corrupt-*") if p.suffix != ".sha256"]) == 1


def test_tidy_on_failure_leaves_no_empty_stage_folder(tmp_path):
    folder = tmp_path / "generations" / "key"
    folder.mkdir(parents=True)
    with pytest.raises(OSError):
        with tidy_on_failure(folder), locked(folder / "records"):
            raise OSError("model not found")
    assert not folder.exists()
    folder.mkdir()
    (folder / "records.partial.jsonl").write_text("{}\n")
    with pytest.raises(OSError):
        with tidy_on_failure(folder), locked(folder / "records"):
            raise OSError("killed halfway")
    assert (folder / "records.partial.jsonl").exists()  # work to resume is kept


def test_content_hash_is_remembered_per_file_version(tmp_path, monkeypatch):
    import hashlib

    import rlsft.cache as cache

    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights" * 1000)
    calls = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: calls.append(p) or real(p))
    first = content_hash(f, tmp_path / "cache")
    assert first == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert content_hash(f, tmp_path / "cache") == first and len(calls) == 1  # read once
    f.write_bytes(b"weightz" * 1000)
    os.utime(f, ns=(1, 1))
    assert content_hash(f, tmp_path / "cache") == hashlib.sha256(b"weightz" * 1000).hexdigest() and len(calls) == 2


class Counted:
    """A stage's compute that counts its calls and gives the same arrays each time."""

    def __init__(self):
        self.n = 0

    def __call__(self) -> dict:
        self.n += 1
        return {"W": np.arange(3000, dtype=np.float32).reshape(30, 100), "ids": np.array(["q0", "q1"]), "cut": 7}


@pytest.mark.parametrize("compressed", [True, False])
def test_cached_npz_computes_once_and_keeps_the_stage_format(tmp_path, compressed):
    compute, path = Counted(), tmp_path / "stage" / "scores.npz"
    first = cached_npz(path, compute, compressed=compressed)
    again = cached_npz(path, compute, compressed=compressed)
    assert compute.n == 1 and sorted(first) == sorted(again) == ["W", "cut", "ids"]
    for name, want in compute().items():
        np.testing.assert_array_equal(again[name], want)
    with zipfile.ZipFile(path) as z:  # np.savez_compressed deflates every member, np.savez stores them
        assert {m.compress_type for m in z.infolist()} == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}
    assert intact(path) and (tmp_path / "stage" / "scores.npz.sha256").exists()


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_cached_npz_moves_a_damaged_entry_aside_and_recomputes(tmp_path, how, caplog):
    compute, path = Counted(), tmp_path / "scores.npz"
    cached_npz(path, compute)
    damage(path, how)
    with caplog.at_level(logging.WARNING):
        again = cached_npz(path, compute)
    assert compute.n == 2 and len(caplog.records) == 1 and "moved aside" in caplog.records[0].getMessage()
    assert len([p for p in tmp_path.glob("scores.npz.corrupt-*") if p.suffix != ".sha256"]) == 1
    np.testing.assert_array_equal(again["W"], Counted()()["W"])
    assert cached_npz(path, compute)["cut"] == 7 and compute.n == 2  # repaired: loaded, not computed


def test_a_failed_compute_leaves_nothing_and_the_next_call_computes(tmp_path):
    def fails(tmp):
        tmp.write_bytes(b"half an entry")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached(tmp_path / "scores.npz", fails, np.load)
    def fails_in_folder(tmp):
        (tmp / "weights").write_text("w")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached(tmp_path / "model", fails_in_folder, str, folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lock", "scores.npz.lock"]
    compute = Counted()
    assert cached_npz(tmp_path / "scores.npz", compute)["cut"] == 7 and compute.n == 1


def test_load_runs_under_the_lock(tmp_path):
    """No other job can discard or replace the entry while it is read."""
    from filelock import FileLock, Timeout

    def load(path):
        with pytest.raises(Timeout):
            FileLock(str(path) + ".lock", timeout=0).acquire()
        return path.read_text()

    assert cached(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"), load) == "x"
    assert cached(tmp_path / "a.txt", lambda tmp: tmp.write_text("y"), load) == "x"


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_cached_folder_is_sealed_and_a_damaged_one_recomputed(tmp_path, how, caplog):
    calls = []

    def write(tmp):
        calls.append(tmp)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)

    target = tmp_path / "models" / "key"
    assert cached(target, write, str, folder=True) == str(target) and (target / "SHA256SUMS").exists()
    cached(target, write, str, folder=True)
    assert len(calls) == 1
    damage(target / "sub" / "weights.bin", how)
    with caplog.at_level(logging.WARNING):
        cached(target, write, str, folder=True)
    assert len(calls) == 2 and len(caplog.records) == 1 and len(list(target.parent.glob("key.corrupt-*"))) == 1
    assert (target / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 4


def test_cached_json_returns_what_the_file_holds(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"b": (1, 2), "a": "x"}

    first = cached_json(tmp_path / "result.json", compute)
    assert first == cached_json(tmp_path / "result.json", compute) == {"a": "x", "b": [1, 2]} and len(calls) == 1
    assert (tmp_path / "result.json").read_text() == '{"a": "x", "b": [1, 2]}'  # lenses' format: one line, sorted keys
