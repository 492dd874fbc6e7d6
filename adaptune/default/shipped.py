"""Where the shipped default model lives, how its weights are checked, and the model source "default".

What: `ASSETS` (the folder inside the package), `verify_assets` (BUILD.json's sha256 against the weights),
`default_model_path` (the verified folder) and the resolver registered as the model source "default".

Why: `load_model("default")` must refuse weights that were modified or half-copied, with a message that says how to
rebuild them; and the loader (a lower layer) must reach this without importing the package above it, hence the
`SOURCES` registry. Kept apart from `adaptune.default.build` so the builder can read `ASSETS` without importing the
package that launches it.

How:

    default_model_path()            # -> ASSETS, or DefaultModelError naming the file and the rebuild command
    load_model("default")           # the same, through SOURCES
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptune.models.loader import ModelLoadError
from adaptune.registry import SOURCES
from adaptune.utils.io import sha256_file

ASSETS = Path(__file__).resolve().parent / "assets"
REBUILD = "rebuild it with `adaptune default build` (about 45 minutes on 2 CPU cores)"


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
