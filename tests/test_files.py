import pytest

from persona.files import atomic_path, hash_json, is_fresh, mark_fresh, read_json, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o044  # readable by others like any file written normally


def test_freshness_records(tmp_path):
    out = tmp_path / "keyframe.png"
    key = hash_json({"prompt": "a", "seed": 1})
    assert not is_fresh(out, key)
    out.write_bytes(b"png")
    assert not is_fresh(out, key)  # no record yet
    mark_fresh(out, key, seconds=1.5)
    assert is_fresh(out, key)
    assert not is_fresh(out, hash_json({"prompt": "b", "seed": 1}))
    out.unlink()
    assert not is_fresh(out, key)


def test_json_roundtrip_and_corrupt_record(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"x": [1, 2]}
    (tmp_path / "b.json").write_text("{broken")
    assert read_json(tmp_path / "b.json", default={}) == {}
