"""bllama.atomic: the one helper every file bllama writes for later runs goes through."""
import pytest

from bllama.atomic import atomic_dir, atomic_path, atomic_write, replace_dir


class Boom(Exception):
    pass


def test_atomic_path_writes_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_path_failure_keeps_target_and_removes_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_onto_a_folder_is_refused_before_the_write(tmp_path):
    """`bllama export -o some_folder` wrote the whole file, then failed in the rename with "Is a directory: '.X.tmp'
    -> 'X'"; the writer is not even started now, and the folder is left as it was."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keep.txt").write_text("x")
    with pytest.raises(IsADirectoryError, match="cannot write the file .*models: it is a folder"):
        with atomic_path(tmp_path / "models"):
            raise AssertionError("the writer ran")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_atomic_write_text_and_failure(tmp_path):
    target = tmp_path / "meta.json"
    with atomic_write(target, "w", encoding="utf-8") as fh:
        fh.write("é\n")
    assert target.read_text(encoding="utf-8") == "é\n"
    with pytest.raises(Boom):
        with atomic_write(target) as fh:
            fh.write(b"partial")
            raise Boom
    assert target.read_text(encoding="utf-8") == "é\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_atomic_write_nested_failure_removes_both_temps(tmp_path):
    with pytest.raises(Boom):
        with atomic_write(tmp_path / "a") as fa:
            fa.write(b"a")
            with atomic_write(tmp_path / "b") as fb:
                fb.write(b"b")
                raise Boom
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .ckpt.old, no temp folder


def test_atomic_dir_failure_keeps_folder_and_removes_temp(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_replace_dir_into_missing_target(tmp_path):
    src = tmp_path / ".x.tmp"
    src.mkdir()
    (src / "f").write_text("1")
    replace_dir(src, tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "1" and not src.exists()
