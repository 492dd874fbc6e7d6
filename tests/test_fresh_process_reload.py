"""Fresh-process round trip for the token-side adapters: save here, then `import adaptune` + `PeftModel.from_pretrained`
in a new Python process, and compare outputs bit for bit.

Run: .venv/bin/python -m pytest tests/test_fresh_process_reload.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

import adaptune  # noqa: F401
from adaptune.methods.flex_projector import FlexProcessor, FlexProjectorConfig
from adaptune.methods.registers import RegistersConfig
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch, example_images

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)  # same as the parent (conftest): bit-identical reductions
    import adaptune
    wired = all(m in adaptune.METHODS for m in ("flex_projector", "registers"))
    if not wired:  # until adaptune/methods/__init__.py imports the method packages
        import adaptune.methods.flex_projector, adaptune.methods.registers
    from peft import PeftModel
    from adaptune.models import build_tiny
    results = {"wired_by_import_adaptune": wired}
    for name, family in (("flex", "qwen3_vl"), ("registers", "clip")):
        folder = sys.argv[1] + "/" + name
        batch = torch.load(folder + "/batch.pt")
        model = PeftModel.from_pretrained(build_tiny(family, seed=0)[0], folder).eval()
        with torch.no_grad():
            out = model(**batch)
        value = out.logits if name == "flex" else out.logits_per_image
        results[name] = bool(torch.equal(value, torch.load(folder + "/expected.pt")))
    print(json.dumps(results))
""")


def _save(peft_model, batch: dict, expected: torch.Tensor, folder: Path) -> None:
    peft_model.save_pretrained(folder)
    torch.save(batch, folder / "batch.pt")
    torch.save(expected, folder / "expected.pt")


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reload")
    torch.manual_seed(0)
    model, processor = build_tiny("qwen3_vl", seed=0)
    flex = get_peft_model(model, FlexProjectorConfig(budgets=[4, 9, 16])).eval()
    processor.tokenizer.padding_side = "left"
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what"}]}]
    text = [processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)] * 2
    batch = dict(FlexProcessor(processor)(images=example_images(2, 128), text=text, budget=9, return_tensors="pt",
                                          padding=True))
    with torch.no_grad():
        _save(flex, batch, flex(**batch).logits, root / "flex")
    model, processor = build_tiny("clip", seed=0)
    registers = get_peft_model(model, RegistersConfig(num_registers=4)).eval()
    batch = example_batch(get_family("clip"), processor)
    with torch.no_grad():
        _save(registers, batch, registers(**batch).logits_per_image, root / "registers")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fresh_process_reload_is_identical(child_results):
    assert child_results["flex"] and child_results["registers"]


def test_import_adaptune_alone_registers_the_methods(child_results):
    """In a fresh interpreter, `import adaptune` is all PEFT needs to load adaptune's methods."""
    assert child_results["wired_by_import_adaptune"]
