"""The quickstart behind `make demo`: a LoRA on a tiny Qwen3-VL trained on GlyphQA, with its report.

(Replaced by the embedded-default evaluation once the default VLM ships; see README.)
"""

from __future__ import annotations

from pathlib import Path

from .config import load_recipe
from .train import run_recipe

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "qwen3_vl" / "glyphqa" / "lora.yaml"


def run_demo(out: str = "runs/demo") -> Path:
    recipe = load_recipe(QUICKSTART, [f"output.dir={out}", "output.overwrite=true"])
    run_dir = run_recipe(recipe)
    print(f"demo finished: {run_dir / 'report.md'}")
    return run_dir
