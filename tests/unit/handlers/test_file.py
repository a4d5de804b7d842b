"""The file handler on a real folder under tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flowq.context import TaskContext
from flowq.errors import PermanentError
from workers.handlers import file

CTX = TaskContext(vars={}, params={}, results={}, execution_id="e1", task_id="t1")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "root"
    monkeypatch.setenv("FLOWQ_FILE_ROOT", str(base))
    return base


def run(operation: str, **spec: Any) -> Any:
    return file.execute({"id": "t1", "type": "file", "operation": operation, **spec}, CTX)


def leftovers(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.name.startswith(file.TMP_PREFIX)]


def test_root_is_created_when_missing(root: Path) -> None:
    assert not root.exists()
    assert run("list") == {"path": ".", "bytes": 0, "entries": []}
    assert root.is_dir()


def test_write_creates_parents_and_read_returns_content(root: Path) -> None:
    assert run("write", path="receipts/42.json", content="héllo") == {
        "path": "receipts/42.json",
        "bytes": 6,
    }
    assert (root / "receipts/42.json").read_text("utf-8") == "héllo"
    assert run("read", path="receipts/42.json") == {
        "path": "receipts/42.json",
        "bytes": 6,
        "content": "héllo",
    }


def test_write_of_a_non_string_content_writes_json(root: Path) -> None:
    result = run("write", path="r.json", content={"charge": {"status": "paid"}, "n": 1})
    assert json.loads((root / "r.json").read_text()) == {"charge": {"status": "paid"}, "n": 1}
    assert result["bytes"] == (root / "r.json").stat().st_size


def test_write_replaces_atomically_and_leaves_no_temp_files(root: Path) -> None:
    run("write", path="a.txt", content="old contents")
    (root / "a.txt").chmod(0o640)
    with (root / "a.txt").open() as before:
        run("write", path="a.txt", content="new")
        assert before.read() == "old contents"  # a reader never sees a half-written file
    assert (root / "a.txt").read_text() == "new"
    assert (root / "a.txt").stat().st_mode & 0o777 == 0o640  # an overwritten file keeps its mode
    assert leftovers(root) == []


def test_failed_write_leaves_no_temp_file(root: Path) -> None:
    (root / "adir" / "inner").mkdir(parents=True)
    with pytest.raises(PermanentError, match="file write 'adir'"):
        run("write", path="adir", content="x")
    assert leftovers(root) == []


def test_write_and_append_need_content(root: Path) -> None:
    for operation in ("write", "append"):
        with pytest.raises(PermanentError, match="needs 'content'"):
            run(operation, path="x.txt")


def test_append_adds_to_the_end_and_creates_the_file(root: Path) -> None:
    assert run("append", path="logs/run.log", content="one\n") == {
        "path": "logs/run.log",
        "bytes": 4,
    }
    assert run("append", path="logs/run.log", content="two\n")["bytes"] == 4
    assert (root / "logs/run.log").read_text() == "one\ntwo\n"


def test_copy_is_atomic_and_keeps_the_source(root: Path) -> None:
    run("write", path="src/a.txt", content="data")
    (root / "src/a.txt").chmod(0o750)
    assert run("copy", path="src/a.txt", to="dst/b.txt") == {"path": "dst/b.txt", "bytes": 4}
    assert (root / "dst/b.txt").read_text() == "data"
    assert (root / "src/a.txt").read_text() == "data"
    assert (root / "dst/b.txt").stat().st_mode & 0o777 == 0o750
    assert leftovers(root) == []


def test_copy_of_a_directory_fails(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    with pytest.raises(PermanentError, match="is a directory"):
        run("copy", path="d", to="e")


def test_move_renames_files_and_directories(root: Path) -> None:
    run("write", path="a.txt", content="12345")
    assert run("move", path="a.txt", to="archive/2024/a.txt") == {
        "path": "archive/2024/a.txt",
        "bytes": 5,
    }
    assert not (root / "a.txt").exists()
    assert run("move", path="archive", to="old") == {"path": "old", "bytes": 0}
    assert (root / "old/2024/a.txt").read_text() == "12345"


def test_move_onto_an_existing_directory_fails(root: Path) -> None:
    run("write", path="a.txt", content="x")
    run("mkdir", path="d")
    with pytest.raises(PermanentError, match="is an existing directory"):
        run("move", path="a.txt", to="d")
    assert (root / "a.txt").exists()


def test_delete_removes_files_and_empty_directories(root: Path) -> None:
    run("write", path="d/a.txt", content="abc")
    with pytest.raises(PermanentError, match="file delete 'd': Directory not empty"):
        run("delete", path="d")
    assert run("delete", path="d/a.txt") == {"path": "d/a.txt", "bytes": 3}
    assert run("delete", path="d") == {"path": "d", "bytes": 0}
    assert not (root / "d").exists()


def test_delete_of_a_missing_file_fails(root: Path) -> None:
    with pytest.raises(PermanentError) as raised:
        run("delete", path="nope.txt")
    assert str(raised.value) == "file delete 'nope.txt': No such file or directory"


def test_delete_of_an_inside_symlink_removes_the_link_only(root: Path) -> None:
    run("write", path="target.txt", content="keep")
    (root / "link").symlink_to(root / "target.txt")
    assert run("read", path="link")["content"] == "keep"
    run("delete", path="link")
    assert not (root / "link").exists()
    assert (root / "target.txt").read_text() == "keep"


def test_delete_and_move_of_the_root_fail(root: Path) -> None:
    run("mkdir", path="x")
    for spec in ({"path": "."}, {"path": "x/.."}):
        with pytest.raises(PermanentError, match="cannot delete the root"):
            run("delete", **spec)
    with pytest.raises(PermanentError, match="cannot move the root"):
        run("move", path=".", to="x/y")


def test_mkdir_is_idempotent(root: Path) -> None:
    assert run("mkdir", path="a/b/c") == {"path": "a/b/c", "bytes": 0}
    assert run("mkdir", path="a/b/c") == {"path": "a/b/c", "bytes": 0}
    assert (root / "a/b/c").is_dir()


def test_mkdir_over_a_file_fails(root: Path) -> None:
    run("write", path="f", content="x")
    with pytest.raises(PermanentError, match="file mkdir 'f': File exists"):
        run("mkdir", path="f")


def test_list_sorts_and_marks_directories(root: Path) -> None:
    run("write", path="box/b.txt", content="bb")
    run("write", path="box/a.txt", content="a")
    run("mkdir", path="box/sub")
    assert run("list", path="box") == {
        "path": "box",
        "bytes": 3,
        "entries": ["a.txt", "b.txt", "sub/"],
    }


def test_read_and_list_of_missing_paths_fail(root: Path) -> None:
    with pytest.raises(PermanentError, match=r"file read 'missing\.txt': No such file"):
        run("read", path="missing.txt")
    with pytest.raises(PermanentError, match="file list 'missing': No such file"):
        run("list", path="missing")


def test_read_of_binary_data_fails(root: Path) -> None:
    root.mkdir()
    (root / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PermanentError, match="not UTF-8 text"):
        run("read", path="bin")


def test_unknown_operation_fails(root: Path) -> None:
    with pytest.raises(PermanentError, match="unknown operation 'chmod'"):
        run("chmod", path="x")


def test_a_numeric_path_from_a_native_template_is_accepted(root: Path) -> None:
    assert run("write", path=42, content="x")["path"] == "42"


def test_dotdot_inside_the_root_is_allowed(root: Path) -> None:
    assert run("write", path="a/../b.txt", content="x")["path"] == "b.txt"
    assert (root / "b.txt").exists()


# Every operation, with every way out of the root, in `path` and (copy, move) in `to`.

ESCAPES = ["../x", "a/../../x", "/etc/passwd", "out/x", "out", "dangling"]
OPERATIONS: list[tuple[str, dict[str, Any]]] = [
    ("read", {}),
    ("write", {"content": "x"}),
    ("append", {"content": "x"}),
    ("copy", {"to": "copy.txt"}),
    ("move", {"to": "moved.txt"}),
    ("delete", {}),
    ("mkdir", {}),
    ("list", {}),
]


@pytest.fixture
def trap(root: Path, tmp_path: Path) -> Path:
    """A root with `out` -> a folder outside, `dangling` -> a missing file outside, and `ok.txt`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("secret")
    root.mkdir()
    (root / "out").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nothing-here")
    (root / "ok.txt").write_text("ok")
    return outside


def _outside_untouched(outside: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["x"]
    assert (outside / "x").read_text() == "secret"
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "nothing-here").exists()


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize(("operation", "extra"), OPERATIONS, ids=[o for o, _ in OPERATIONS])
def test_path_escaping_the_root_fails_for_every_operation(
    trap: Path, tmp_path: Path, operation: str, extra: dict[str, Any], escape: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        run(operation, path=escape, **extra)
    assert repr(escape) in str(raised.value)
    assert "escapes FLOWQ_FILE_ROOT" in str(raised.value) or "is absolute" in str(raised.value)
    _outside_untouched(trap, tmp_path)


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("operation", ["copy", "move"])
def test_destination_escaping_the_root_fails(
    trap: Path, root: Path, tmp_path: Path, operation: str, escape: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        run(operation, path="ok.txt", to=escape)
    assert f"to {escape!r}" in str(raised.value)
    assert (root / "ok.txt").read_text() == "ok"
    _outside_untouched(trap, tmp_path)


def test_default_root_is_flowq_files_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWQ_FILE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    run("write", path="a.txt", content="x")
    assert (tmp_path / "flowq-files" / "a.txt").read_text() == "x"
    assert os.listdir(tmp_path / "flowq-files") == ["a.txt"]
