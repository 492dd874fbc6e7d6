"""Where the shipped default model lives, how its weights are checked, and the model source "default".

What: `ASSETS` (the folder inside the package), `verify_assets` (BUILD.json's sha256 against the weights),
`default_model_path` (the verified folder) and the resolver registered as the model source "default"; next to it
`POLICY` (assets/policy: the LoRA resolution policy trained on the default by the VisionThink GRPO recipe),
`verify_policy` (POLICY.json's sha256 against the adapter), `load_default_policy` and `ship_policy` (copies a GRPO
run's adapter there; `make demo-rl` calls it).

Why: `load_model("default")` must refuse weights that were modified or half-copied, with a message that says how to
rebuild them; and the loader (a lower layer) must reach this without importing the package above it, hence the
`SOURCES` registry. Kept apart from `adaptune.default.build` so the builder can read `ASSETS` without importing the
package that launches it.

How:

    default_model_path()            # -> ASSETS, or DefaultModelError naming the file and the rebuild command
    load_model("default")           # the same, through SOURCES
    loaded = load_default_policy()  # the default with the shipped, checksum-verified policy adapter
"""

from __future__ import annotations

import json
from pathlib import Path

import shutil
from typing import Any

from adaptune.models.loader import ModelLoadError
from adaptune.registry import SOURCES
from adaptune.utils.io import atomic_write_json, sha256_file

ASSETS = Path(__file__).resolve().parent / "assets"
POLICY = ASSETS / "policy"
REBUILD = "rebuild it with `adaptune default build` (about 45 minutes on 2 CPU cores)"
RETRAIN = "retrain it with `make demo-rl` (GRPO on the default, about 30 minutes on 2 CPU cores)"
POLICY_FILES = ("adapter_config.json", "adapter_model.safetensors")


class DefaultModelError(ModelLoadError):
    """The shipped default is missing or its weights do not match the checksum in BUILD.json."""


def verify_assets(path: str | Path = ASSETS) -> dict:
    """BUILD.json of a default-model folder whose weights match their recorded sha256; DefaultModelError otherwise."""
    path = Path(path)
    build_file = path / "BUILD.json"
    if not build_file.exists():
        raise DefaultModelError(f"no default model at {path} (BUILD.json missing); {REBUILD}")
    info = json.loads(build_file.read_text())
    for name, expected in info.get("sha256", {}).items():
        weights = path / name
        if not weights.exists():
            raise DefaultModelError(f"{weights} is missing; {REBUILD}")
        actual = sha256_file(weights)
        if actual != expected:
            raise DefaultModelError(
                f"{weights} does not match its checksum in BUILD.json (sha256 {actual[:12]}..., expected "
                f"{expected[:12]}...): the file was modified or corrupted; {REBUILD}")
    if not info.get("sha256"):
        raise DefaultModelError(f"{build_file} records no checksum; {REBUILD}")
    return info


def verify_policy(path: str | Path = POLICY) -> dict:
    """POLICY.json of a shipped policy folder whose adapter files match their recorded sha256; DefaultModelError
    (naming the file and how to retrain) otherwise."""
    path = Path(path)
    record = path / "POLICY.json"
    if not record.exists():
        raise DefaultModelError(f"no trained policy at {path} (POLICY.json missing); {RETRAIN}")
    info = json.loads(record.read_text())
    sums = info.get("sha256", {})
    missing = [name for name in POLICY_FILES if name not in sums]
    if missing:
        raise DefaultModelError(f"{record} records no checksum for {missing[0]}; {RETRAIN}")
    for name, expected in sums.items():
        actual = sha256_file(path / name) if (path / name).exists() else None
        if actual != expected:
            state = "is missing" if actual is None else (f"does not match its checksum in POLICY.json (sha256 "
                                                          f"{actual[:12]}..., expected {expected[:12]}...)")
            raise DefaultModelError(f"{path / name} {state}; {RETRAIN}")
    return info


def load_default_policy(path: str | Path = POLICY) -> Any:
    """The default model (`load_model("default")`, tool calling on) with the verified policy adapter loaded, in eval
    mode; a `LoadedModel` whose `.model` is the PEFT model (`disable_adapter()` gives the base back)."""
    from adaptune.adapters import load_adapter
    from adaptune.models import load_model

    verify_policy(path)
    loaded = load_model("default", tool_calling=True)
    loaded.model = load_adapter(loaded.model, path).eval()
    return loaded


def ship_policy(run_dir: str | Path, dest: str | Path = POLICY) -> dict:
    """Copy a GRPO run's adapter (run_dir/adapter) into `dest` with POLICY.json: the checksums, the run's recipe
    name, seed, steps and held-out headline (from its eval.json). Returns the record."""
    run_dir, dest = Path(run_dir), Path(dest)
    adapter = run_dir / "adapter"
    missing = [name for name in POLICY_FILES if not (adapter / name).exists()]
    if missing:
        raise FileNotFoundError(f"{adapter / missing[0]} not found: is {run_dir} a finished GRPO run?")
    evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else {}
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.iterdir():
        if stale.is_file():
            stale.unlink()
    for item in adapter.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    keep = ("steps", "max_steps", "cut_short", "train_seconds", "trainable_params")
    record = {
        "run": run_dir.name, "seed": _run_seed(run_dir),
        **{k: evaluation[k] for k in keep if k in evaluation},
        "headline": {k: v for k, v in evaluation.items() if k.startswith(("eval/", "target/"))},
        "sha256": {item.name: sha256_file(item) for item in sorted(dest.iterdir()) if item.is_file()},
    }
    atomic_write_json(dest / "POLICY.json", record)
    return record


def _run_seed(run_dir: Path) -> int | None:
    config = run_dir / "config.yaml"
    if not config.exists():
        return None
    import yaml

    return (yaml.safe_load(config.read_text()).get("training") or {}).get("seed")


def default_model_path(path: str | Path = ASSETS) -> Path:
    """The verified folder of the embedded default model (loadable with `from_pretrained`)."""
    verify_assets(path)
    return Path(path)


@SOURCES.register("default")
def _resolve_default(spec: str, seed: int = 0) -> Path:
    """`model.source: default` -> the verified assets folder (`spec` and `seed` do not apply: the weights are fixed)."""
    if spec:
        raise ModelLoadError(f"the default model takes no variant (got 'default:{spec}'); use model.source: default")
    return default_model_path()
