"""Adapters that say what they are (base model name, adaptune.json source, a model card written with
huggingface_hub's card API), `adaptune push` against a loopback stand-in of the Hub API (nothing leaves the
machine), and `adaptune export` (a merged plain transformers folder with the adapted model's outputs)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from adaptune.cli import main
from adaptune.models import build_tiny, get_family
from adaptune.models.inputs import example_batch
from adaptune.train import run_recipe
from test_train import recipe_for


@pytest.fixture(scope="module")
def lora_run(vqa_dataset_dir, tmp_path_factory):
    return run_recipe(recipe_for(vqa_dataset_dir, tmp_path_factory.mktemp("runs") / "lora", max_steps=4,
                                 logging_steps=1, save_steps=4))


# ------------------------------------------------------------------------------------------------ what it adapts

@pytest.mark.parametrize("source, expected", [
    ("tiny:qwen3_vl", "tiny:qwen3_vl"), ("default", "default"), ("pretrained:clip", "pretrained:clip"),
    ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"), ("/home/me/models/qwen", None),
    ("./models/qwen", None)])
def test_shareable_source_never_names_a_machine_path(source, expected):
    from adaptune.card import shareable_source

    assert shareable_source(source) == expected


def test_the_card_holds_no_machine_path(lora_run):
    """The run was written under pytest's tmp folder; the card's recipe shows neither that nor a local base."""
    from adaptune.card import shareable_recipe

    card = (lora_run / "adapter" / "README.md").read_text()
    assert "## Recipe" in card and str(lora_run) not in card and "output:" not in card.split("## Recipe")[1]
    text = shareable_recipe("name: x\nmodel: {source: /home/me/qwen}\noutput: {dir: /tmp/run}\n")
    assert "/home/me" not in text and "/tmp/run" not in text and "PATH/TO/THE/BASE/MODEL" in text
    assert "tiny:qwen3_vl" in shareable_recipe("model: {source: 'tiny:qwen3_vl'}\n")


def test_adapter_names_its_base_and_the_loader_resolves_it(lora_run):
    from adaptune.models import load_model

    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    meta = json.loads((lora_run / "adapter" / "adaptune.json").read_text())
    assert config["base_model_name_or_path"] == meta["source"] == "tiny:qwen3_vl"
    loaded = load_model(config["base_model_name_or_path"])
    assert loaded.family.name == meta["family"] == "qwen3_vl"


def test_embedded_default_is_named_not_its_folder(tmp_path):
    """The default resolves to a folder inside the package; the adapter says "default", not that folder."""
    from peft import LoraConfig, get_peft_model

    from adaptune.adapters import save_adapter
    from adaptune.models import load_model

    loaded = load_model("default")
    model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(model, tmp_path / "adapter", source="default")
    text = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert json.loads(text)["base_model_name_or_path"] == "default"
    assert str(loaded.source) not in text and "/" not in json.loads(text)["base_model_name_or_path"]


def test_model_card_validates_with_huggingface_hub_offline(lora_run):
    """`RepoCard.validate` posts to the Hub (network), so the card is checked with the library's offline parsers:
    ModelCard.load (front matter must be a YAML mapping), ModelCardData (metadata fields), and the eval results
    parsed back from `model-index` (each needs task, dataset, metric type and value)."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(lora_run / "adapter" / "README.md")
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "image-text-to-text"
    assert {"adaptune", "lora", "qwen3_vl"} <= set(data.tags)
    assert data.base_model is None  # "tiny:qwen3_vl" is not a hub id; the body says how to load it
    summary = json.loads((lora_run / "eval.json").read_text())
    name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    got = {r.metric_type: r.metric_value for r in results}
    assert got["accuracy"] == pytest.approx(summary["eval/accuracy"])
    for text in ("## How to load", "import adaptune", "PeftModel.from_pretrained", "## Recipe", "tiny:qwen3_vl",
                 "## Training figures", "trainable_params", "## Evaluation", "AutoPeftModel", "LoRA"):
        assert text in card.text, text


def test_card_for_a_hub_base_names_it_and_autopeft_can_use_it(lora_run, tmp_path):
    from huggingface_hub import ModelCard

    from adaptune.card import build_model_card

    card = build_model_card(lora_run / "adapter", source="Qwen/Qwen3-VL-2B-Instruct", family="qwen3_vl",
                            family_kind="vlm")
    parsed = ModelCard(str(card))
    assert parsed.data.base_model == "Qwen/Qwen3-VL-2B-Instruct"
    assert "AutoPeftModel.from_pretrained` also works" in parsed.text
    assert "model-index" not in str(card)  # no summary given: no eval results


def test_autopeft_loads_an_adapter_whose_base_is_a_hub_id(tmp_path):
    """AutoPeftModel resolves `base_model_name_or_path` with transformers' from_pretrained: a hub id works. Here the
    hub id is served from a local Hugging Face cache (HF_HUB_OFFLINE), so nothing is downloaded."""
    import subprocess
    import sys

    from peft import LoraConfig, get_peft_model

    from adaptune.adapters import save_adapter

    model, processor = build_tiny("qwen3_vl", seed=0)
    snapshot = tmp_path / "hub" / "models--adaptune-test--tiny-qwen3-vl" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    save_adapter(peft_model, tmp_path / "adapter", source="adaptune-test/tiny-qwen3-vl")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "adaptune-test/tiny-qwen3-vl"
    code = ("import adaptune, torch\nfrom peft import AutoPeftModel\n"
            f"m = AutoPeftModel.from_pretrained({str(tmp_path / 'adapter')!r})\n"
            "print(type(m).__name__, type(m.get_base_model()).__name__)")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "Qwen3VLForConditionalGeneration"


# ------------------------------------------------------------------------------------------------ push

class _Hub(BaseHTTPRequestHandler):
    """The few Hub API calls `create_repo` + `upload_folder` make, answered on 127.0.0.1; records what arrives."""

    repos: dict[str, dict[str, bytes]] = {}
    auth: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.auth.append(self.headers.get("Authorization", ""))
        if self.path == "/api/repos/create":
            req = json.loads(data)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            self.repos.setdefault(repo, {})
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo, "id": repo})
        if self.path == "/api/validate-yaml":
            content = json.loads(data)["content"]
            meta = yaml.safe_load(content.split("---")[1])
            ok = isinstance(meta, dict) and meta.get("library_name") == "peft"
            return self._reply(200 if ok else 400, {"errors": [] if ok else ["bad metadata"]})
        parts = self.path.split("/")
        if self.path.startswith("/api/models/") and "/preupload/" in self.path:
            files = json.loads(data)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if self.path.startswith("/api/models/") and "/commit/" in self.path:
            repo = "/".join(parts[3:5])
            for line in data.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'1' * 40}",
                                     "commitOid": "1" * 40})
        return self._reply(404, {"error": f"not served: {self.path}"})


@pytest.fixture
def hub(monkeypatch):
    """The loopback Hub's URL. Offline mode (set for the whole suite) is lifted for this test only, with the
    library's default endpoint pointed at the loopback server too, so no request can leave the machine."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.repos.clear()
    _Hub.auth.clear()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    yield url
    server.shutdown()


def test_push_uploads_adapter_card_eval_and_plots(lora_run, hub, monkeypatch, capsys):
    from adaptune.share import push_run

    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    url = push_run(lora_run, "me/glyphqa-lora", endpoint=hub)
    assert url.endswith("1" * 40)
    files = _Hub.repos["me/glyphqa-lora"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "adaptune.json", "README.md", "eval.json"):
        assert name in files, name
    assert any(p.startswith("plots/") and p.endswith(".png") for p in files)
    assert files["adapter_model.safetensors"] == (lora_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert files["README.md"].decode().startswith("---")
    assert all(a == "Bearer hf_secret_test_token" for a in _Hub.auth)  # the token from the environment, sent
    assert "hf_secret_test_token" not in capsys.readouterr().out  # and never printed


def test_push_without_a_token_is_refused(lora_run, hub, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(lora_run), "me/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not _Hub.repos


# ------------------------------------------------------------------------------------------------ export

def test_export_merges_lora_into_a_plain_model_with_the_same_outputs(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), str(out)]) == 0
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    base, processor = build_tiny("qwen3_vl", seed=0)
    batch = example_batch(get_family("qwen3_vl"), processor)
    adapted = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    with torch.no_grad():
        want, got = adapted(**batch).logits, merged(**batch).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        with adapted.disable_adapter():
            assert not torch.allclose(adapted(**batch).logits, got, atol=1e-4)  # the merge changed the weights


def test_export_refuses_a_method_that_cannot_merge(lora_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "flex"
    shutil.copytree(lora_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["adapter"]["method"] = "flex_projector"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'flex_projector' cannot be merged" in err and not (tmp_path / "out").exists()


def test_merge_flags_follow_the_method_registry():
    from adaptune.registry import METHODS
    from adaptune.share import is_mergeable

    assert is_mergeable("lora") and is_mergeable("mask_tuning")
    assert not is_mergeable("flex_projector") and not is_mergeable("seg_adapter")
    assert {n for n in METHODS if is_mergeable(n)} == {n for n, i in METHODS.items() if i.mergeable}


def test_one_grammar_a_path_with_an_equals_sign_is_a_path(tmp_path, monkeypatch, capsys):
    from adaptune.config import is_override, split_overrides

    monkeypatch.chdir(tmp_path)
    weird = Path("lr=1e-3.yaml")  # relative, no "/": only its existence makes it a path
    weird.write_text("name: x\nbogus_key: 1\n")
    assert not is_override(str(weird)) and not is_override("runs/lr=1e-3") and not is_override("=x")
    assert is_override("training.max_steps=3") and is_override("task.params.resolution=half")
    assert is_override("lr=1e-4.yaml")  # the same text, no such file: an override (of the key `lr`)
    assert split_overrides([str(weird), "training.max_steps=3"]) == ([str(weird)], ["training.max_steps=3"])
    assert main(["train", str(weird), "training.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "bogus_key" in err and "lr=1e-3.yaml" in err  # the file was read as the recipe
    assert main(["train", "training.max_steps=3"]) == 2  # no recipe at all: said so
    assert "one recipe file" in capsys.readouterr().err
    assert main(["eval", "budgets", "num_images=2"]) == 2  # the sweep has no recipe: options only, as flags
    assert "--num-images" in capsys.readouterr().err


def test_export_merges_mask_tuning_too(vqa_dataset_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    import adaptune  # noqa: F401  (PEFT learns mask_tuning)

    recipe = recipe_for(vqa_dataset_dir, tmp_path / "mask", max_steps=2)
    recipe.adapter.method, recipe.adapter.params = "mask_tuning", {}
    run = run_recipe(recipe)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == "MASK_TUNING"
    assert main(["export", str(run), str(tmp_path / "merged")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    base, processor = build_tiny("qwen3_vl", seed=0)
    batch = example_batch(get_family("qwen3_vl"), processor)
    adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits, rtol=1e-4, atol=1e-4)
        with adapted.disable_adapter():  # the masks change the outputs, so an unmerged export would fail above
            assert not torch.allclose(adapted(**batch).logits, merged(**batch).logits, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # PEFT looks the made-up names up, offline
def test_save_without_a_source_keeps_a_hub_name_and_drops_a_path(tmp_path):
    from peft import LoraConfig, get_peft_model

    from adaptune.adapters import save_adapter

    model, _ = build_tiny("qwen3_vl", seed=0)
    for recorded, expected in (("org/some-vlm", "org/some-vlm"), (str(tmp_path / "local-model"), None)):
        model.name_or_path = recorded  # what PEFT writes when it is not told otherwise
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        out = save_adapter(peft_model, tmp_path / f"a{expected is None}")
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == expected
        assert json.loads((out / "adaptune.json").read_text())["source"] == expected
        assert str(tmp_path) not in (out / "README.md").read_text()
        model = peft_model.unload()
