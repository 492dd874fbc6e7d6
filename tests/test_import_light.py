"""`import adaptune` and `adaptune --help` stay light: no torch / transformers / PEFT / bitsandbytes, nothing
printed; the registries still fill at their first read, and adaptune's methods still reach PEFT after
`import adaptune`. bitsandbytes is the `quant` extra, asked for only by quantized loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_import_prints_nothing_and_loads_no_heavy_module():
    quiet = _python("import adaptune")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    probe = _python("import sys, adaptune; print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,))
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_help_lists_every_command_without_importing_their_modules():
    code = ("import sys\nfrom adaptune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in %r if m in sys.modules))\n"
            "print('EXTRA', sorted(m for m in sys.modules if m in ('adaptune.default', 'adaptune.rl.labeling')))"
            % (HEAVY,))
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "EXTRA []" in out.stdout
    for command in ("train", "eval", "info", "default", "label-resolution"):
        assert command in out.stdout


def test_a_contributed_command_is_registered_when_it_runs(capsys):
    from adaptune.cli import main

    with pytest.raises(SystemExit) as done:
        main(["default", "verify", "--help"])
    assert done.value.code == 0 and "--questions" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "folder to write" in capsys.readouterr().out


def test_registries_fill_at_first_read_and_peft_learns_the_methods():
    code = ("import adaptune\nfrom adaptune.registry import METHODS, SOURCES, RUN_KINDS\n"
            "print(sorted(METHODS), 'default' in SOURCES, sorted(RUN_KINDS))\n"
            "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING\n"
            "print(sorted(str(getattr(k, 'value', k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert "'mask_tuning'" in first and "True" in first and "'grpo'" in first
    assert "MASK_TUNING" in second and "FLEX_PROJECTOR" in second


def test_peft_imported_before_adaptune_still_gets_the_methods():
    code = ("import peft\nimport adaptune\nfrom peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING\n"
            "print('SEG_ADAPTER' in {str(getattr(k, 'value', k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING})")
    out = _python(code)
    assert out.stdout.strip().endswith("True"), out.stdout + out.stderr


def test_quantization_without_bitsandbytes_names_the_extra(monkeypatch):
    import importlib.util

    from adaptune.models import ModelLoadError, get_family, quantization_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"adaptune\[quant\]"):
        quantization_config(get_family("qwen3_vl"), "nf4")
    assert quantization_config(get_family("qwen3_vl"), None) is None  # no quantization: bitsandbytes not asked for
