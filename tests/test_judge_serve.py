"""Slow: the `openai` judge against a real OpenAI-compatible server, `transformers serve`, offline on CPU.

The served model is a tiny randomly initialised Llama saved to a temp folder with a locally trained tokenizer (whose
config names no processor class) and a minimal chat template. Its output is noise, so every verdict must be a
counted parse failure - and the protocol path (request, JSON body, choices[0].message.content) must be clean: no HTTP
errors, timeouts or invalid bodies. Skips with a reason when the server cannot start here.

    .venv/bin/python -m pytest tests/test_judge_serve.py -m slow -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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


@contextlib.contextmanager
def transformers_serve(folder: Path, startup_s: float = 60.0) -> Iterator[str]:
    """`transformers serve FOLDER` on a free loopback port (offline, CPU); yields the /v1 base URL, then stops the
    server's whole process group. Skips the test with the server's log tail when it cannot start here."""
    pytest.importorskip("fastapi", reason="transformers serve needs the [serving] extra")
    pytest.importorskip("uvicorn", reason="transformers serve needs the [serving] extra")
    port = closed_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log_path = Path(tempfile.mkdtemp(prefix="serve-log-")) / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    cmd = [*_serve_command(), str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                pytest.skip(f"transformers serve exited with {proc.returncode}: "
                            f"{log_path.read_text(errors='replace')[-500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"transformers serve did not become healthy within {startup_s:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(log_path.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_judge")
    model, tokenizer = tiny_causal_lm()
    tokenizer.chat_template = CHAT_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with transformers_serve(folder) as base_url:
        yield base_url, str(folder)


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
