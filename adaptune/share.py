"""Sharing a run: `adaptune push RUN REPO_ID` (the Hugging Face Hub) and `adaptune export RUN OUT` (a merged model).

`push_run` uploads the run's adapter folder (adapter_config.json, adapter_model.safetensors, adaptune.json and the
model card README.md, whose evaluation table comes from the run) at the root of a model repository, with the
training summary `eval.json`, `report.md`, the training curves `plots/` and the `adaptune eval` results
`evaluations/` when the run has them, through `huggingface_hub` (`HfApi.create_repo` + `upload_folder`). The token comes only from the environment (`HF_TOKEN`) and is never printed or logged.

`export_merged` folds the adapter into the base weights where the method can merge (LoRA; adaptune methods whose
`MethodInfo.mergeable` is true, such as mask tuning) and writes a plain transformers folder (config, safetensors
weights, processor) that loads with the family's auto class, without adaptune or PEFT. Other methods are refused.

    adaptune push runs/my-run me/my-adapter [--private]
    adaptune export runs/my-run exported/my-model
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .config import load_recipe

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adaptune.json", "README.md")
RUN_FILES = ("eval.json", "report.md")
RUN_FOLDERS = ("plots", "evaluations")


class ShareError(ValueError):
    """A run that cannot be pushed or exported as asked; the message says why."""


def _locate(run: str | Path) -> tuple[Path | None, Path]:
    """(run directory or None, adapter folder) for a run directory or a bare adapter folder."""
    run = Path(run)
    if (run / "adapter_config.json").exists():
        return None, run
    if (run / "adapter" / "adapter_config.json").exists():
        return run, run / "adapter"
    if (run / "config.yaml").exists():
        raise ShareError(f"{run} has no adapter/adapter_config.json: the run did not finish or saved no adapter")
    raise ShareError(f"{run} is neither a run directory (config.yaml + adapter/) nor an adapter folder")


def stage_for_hub(run: str | Path, out: Path) -> list[str]:
    """Copy what `push_run` uploads into `out`; returns the repository paths, sorted."""
    run_dir, adapter = _locate(run)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter / name).exists():
            shutil.copy2(adapter / name, out / name)
    if run_dir is not None:
        for name in RUN_FILES:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, out / name)
        for name in RUN_FOLDERS:
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, out / name, dirs_exist_ok=True)
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def push_run(run: str | Path, repo_id: str, private: bool = False, endpoint: str | None = None,
             commit_message: str | None = None) -> str:
    """Create (or reuse) the model repository `repo_id` and upload the run to it; returns the commit URL."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ShareError("adaptune push: set the HF_TOKEN environment variable to a Hugging Face token with write "
                         "access (the token is read from the environment only)")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="adaptune-push-") as tmp:
        files = stage_for_hub(run, Path(tmp))
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"adaptune: upload {Path(run).name}")
    print(f"pushed {len(files)} files to {repo_id}: {', '.join(files)}")
    return str(getattr(info, "commit_url", info))


def is_mergeable(method: str) -> bool:
    """LoRA and adaptune methods registered with `mergeable=True`."""
    from .registry import METHODS

    return method == "lora" or (method in METHODS and bool(METHODS.get(method).mergeable))


def export_merged(run: str | Path, out: str | Path) -> Path:
    """Merge the run's adapter into its base model and save a plain transformers folder at `out` (refuses an
    existing non-empty `out`)."""
    from .adapters import load_adapter
    from .train.runner import load_for_recipe
    from .utils.io import atomic_dir

    run_dir, adapter = _locate(run)
    if run_dir is None:
        raise ShareError(f"{run} is a bare adapter folder: export needs the run directory (its config.yaml says "
                         f"which base model to merge into)")
    recipe = load_recipe(run_dir / "config.yaml")
    method = recipe.adapter.method
    if not is_mergeable(method):
        raise ShareError(f"adaptune export: method {method!r} cannot be merged into the base weights (it adds "
                         f"modules the base model does not have); share the adapter folder instead "
                         f"(`adaptune push`, or load it with PeftModel.from_pretrained)")
    if recipe.budget is not None and getattr(recipe.budget, "reducer", None):
        raise ShareError(f"adaptune export: {run_dir / 'config.yaml'}: budget.reducer {recipe.budget.reducer!r} "
                         f"acts at run time and is not part of the weights; a merged model would not reproduce the run")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ShareError(f"adaptune export: {out} exists and is not empty")
    recipe.model.quantization = None  # merge into full-precision weights (a QLoRA adapter loads on them)
    loaded = load_for_recipe(recipe)
    merged = load_adapter(loaded.model, adapter).merge_and_unload()
    _clear_adapter_name(merged)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if loaded.processor is not None and hasattr(loaded.processor, "save_pretrained"):
            loaded.processor.save_pretrained(tmp)
    print(f"exported the merged {method} model to {out} (load it with transformers' from_pretrained)")
    return out


def _clear_adapter_name(model: Any) -> None:
    """A merged model is a plain transformers model: it must not name a PEFT adapter in its config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_name_or_path"):
        config._name_or_path = ""


def _cmd_push(args: Any) -> int:
    push_run(args.run, args.repo_id, private=args.private, commit_message=args.message)
    return 0


def _cmd_export(args: Any) -> int:
    export_merged(args.run, args.out)
    return 0


def add_cli(subparsers: Any) -> None:
    """`adaptune push RUN REPO_ID [--private]` and `adaptune export RUN OUT`."""
    p = subparsers.add_parser("push", help="upload a run's adapter, model card, eval table and plots to the Hub")
    p.add_argument("run", help="a run directory (or an adapter folder)")
    p.add_argument("repo_id", help="model repository, e.g. me/my-adapter (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=_cmd_push)
    p = subparsers.add_parser("export", help="merge a run's adapter (LoRA, mask tuning) into a plain model folder")
    p.add_argument("run", help="a run directory")
    p.add_argument("out", help="folder to write (must not exist or be empty)")
    p.set_defaults(func=_cmd_export)


__all__ = ["ShareError", "add_cli", "export_merged", "is_mergeable", "push_run", "stage_for_hub"]
