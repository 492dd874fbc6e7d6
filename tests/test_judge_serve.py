"""Slow: the `openai` judge against a real OpenAI-compatible server, `transformers serve`, offline on CPU.

The served model is a tiny randomly initialised Llama saved to a temp folder with a locally trained tokenizer (whose
config names no processor class) and a minimal chat template. Its output is noise, so every verdict must be a
counted parse failure - and the protocol path (request, JSON body, choices[0].message.content) must be clean: no HTTP
errors, timeouts or invalid bodies. Skips with a reason when the server cannot start here.

    .venv/bin/python -m pytest tests/test_judge_serve.py -m slow -q
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from adaptune.rl.judges import JudgeItem, OpenAIJudge, OpenAIJudgeConfig

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import closed_port  # noqa: E402
from test_judges import INJECTIONS, tiny_causal_lm  # noqa: E402

pytestmark = pytest.mark.slow

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _serve_command() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    if found is None:
        pytest.skip("the `transformers` CLI is not installed")
    return [found, "serve"]


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    pytest.importorskip("fastapi", reason="transformers serve needs the [serving] extra")
    pytest.importorskip("uvicorn", reason="transformers serve needs the [serving] extra")
    folder = tmp_path_factory.mktemp("tiny_judge")
    model, tokenizer = tiny_causal_lm()
    tokenizer.chat_template = CHAT_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    port = closed_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - closed in the teardown below
    cmd = [*_serve_command(), str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.skip(f"transformers serve exited with {proc.returncode}: "
                            f"{(folder / 'serve.log').read_text(errors='replace')[-500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("transformers serve did not become healthy within 60 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(folder)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def test_openai_judge_against_transformers_serve(served_model, tmp_path: Path) -> None:
    base_url, model_path = served_model
    judge = OpenAIJudge(OpenAIJudgeConfig(
        base_url=base_url, model=model_path, max_tokens=12, timeout_s=60.0, max_retries=1, concurrency=2,
        trust_env=False, cache_path=str(tmp_path / "cache.sqlite"),
    ))
    items = [JudgeItem("What is the capital of France?", "Paris", a) for a in ["Paris", "London", *INJECTIONS]]
    verdicts = judge.score_sync(items)
    stats = judge.stats()
    protocol_errors = {k: v for k, v in stats.items() if k.startswith("http_") or k in (
        "timeouts", "connection_errors", "invalid_responses")}
    assert protocol_errors == {}, stats
    assert stats["requests"] == len(items)
    assert stats.get("parse_failures", 0) + sum(v.score is not None for v in verdicts) == len(items)
    assert not any(v.score == 1.0 for v in verdicts)  # noise never reads as CORRECT
    assert all(isinstance(v.raw, str) for v in verdicts)
    judge.close()
