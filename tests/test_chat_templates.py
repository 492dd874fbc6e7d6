"""Chat templates that are the checkpoint's own: the tiny builders carry the original templates, adaptune's tool
templates pass TRL's checks (tool calling, prefix preservation, images inside tool messages, response parsing), the
`model.chat_template` key acts or is refused, and GRPO with the resize tool runs from the ORIGINAL Qwen2.5-VL and
Qwen3-VL templates with the full image reaching the model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from adaptune.budget.protocol import (
    TOOL_NAME,
    render,
    tool_call_message,
    tool_result_message,
    tool_schema,
    tool_turn,
    user_messages,
)
from adaptune.config import RecipeError, load_recipe
from adaptune.models import (
    TOOL_TEMPLATES,
    ChatTemplateError,
    build_tiny,
    get_family,
    load_model,
    original_chat_template,
)
from adaptune.models.chat_templates import prepare_chat_template, set_chat_template, tool_template_problems
from adaptune.train.runner import load_for_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = ROOT / "recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"
VLMS = ("qwen3_vl", "qwen2_5_vl", "llava", "smolvlm")


def _tool_conversation(low: Image.Image, full: Image.Image) -> list[dict]:
    """The resize rollout as TRL holds it after the tool ran: user (low image), the call, the tool turn (full)."""
    messages = user_messages("How many shapes?", low) + [tool_call_message()]
    result = tool_result_message()
    result["content"][0]["image"] = full
    return messages + [result]


def _broken_copy(tmp_path: Path) -> Path:
    """adaptune's Qwen2.5-VL tool template with the tool branch rendering text only (what TRL issue 5663 describes:
    the image inside the tool message is dropped)."""
    text = TOOL_TEMPLATES["qwen2_5_vl_tools"].text()
    old = "{{- '\\n<tool_response>\\n' + parts(message.content) + '\\n</tool_response>' -}}"
    assert old in text
    new = ("{{- '\\n<tool_response>\\n' -}}{%- for p in message.content if p.type == 'text' -%}{{- p.text -}}"
           "{%- endfor -%}{{- '\\n</tool_response>' -}}")
    path = tmp_path / "drops_tool_images.jinja"
    path.write_text(text.replace(old, new))
    return path


# ------------------------------------------------------------------------------------------------ the templates


@pytest.mark.parametrize("family", VLMS)
def test_tiny_builders_carry_the_original_template(family):
    _, processor = build_tiny(family)
    spec = get_family(family)
    assert processor.chat_template == original_chat_template(spec.chat_template)


def test_original_qwen2_5_vl_template_cannot_call_tools_and_qwen3_vl_can():
    assert any("tool calls" in p for p in tool_template_problems(build_tiny("qwen2_5_vl")[1]))
    assert tool_template_problems(build_tiny("qwen3_vl")[1]) == []


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_shipped_tool_templates_pass_every_check(name):
    shipped = TOOL_TEMPLATES[name]
    _, processor = build_tiny(shipped.family)
    set_chat_template(processor, shipped.text(), shipped.response_template)
    assert tool_template_problems(processor) == []
    assert get_family(shipped.family).tool_template == name and get_family(shipped.family).supports_tools


@pytest.mark.parametrize("family", VLMS)
def test_supports_tools_means_a_working_tool_template(family):
    """Over the registry: a family called tool-capable has a shipped template for its tiny (original-template) model to
    fall back on; one that is not has none and is refused."""
    spec = get_family(family)
    _, processor = build_tiny(family)
    if spec.supports_tools:
        assert TOOL_TEMPLATES[spec.tool_template].family == family
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            used = prepare_chat_template(processor, spec, None, tool_calling=True)
        assert used in ("checkpoint", spec.tool_template) and tool_template_problems(processor) == []
    else:
        assert spec.tool_template is None
        with pytest.raises(ChatTemplateError, match=r"model\.chat_template"):
            prepare_chat_template(processor, spec, None, tool_calling=True)


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_shipped_tool_templates_preserve_prefixes_over_a_whole_rollout(name):
    """Every prefix of the two-turn rollout tokenizes to a prefix of the next (TRL concatenates token ids)."""
    shipped = TOOL_TEMPLATES[name]
    _, processor = build_tiny(shipped.family)
    set_chat_template(processor, shipped.text(), shipped.response_template)
    low, full = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (128, 128), "blue")
    conversation = _tool_conversation(low, full) + [{"role": "assistant", "content": "<think>ok</think>"
                                                                                      "<answer>3</answer>"}]
    previous: list[int] = []
    for end in range(2, len(conversation) + 1):
        ids = processor.apply_chat_template(conversation[:end], tools=[tool_schema()], tokenize=True,
                                            return_dict=False)[0]
        assert ids[: len(previous)] == previous, f"turn {end - 1} changed what came before"
        previous = ids


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_the_tool_message_image_reaches_the_input_ids(name):
    """The full image returned by the tool is expanded to its own placeholders in the second turn's input ids."""
    shipped = TOOL_TEMPLATES[name]
    _, processor = build_tiny(shipped.family)
    set_chat_template(processor, shipped.text(), shipped.response_template)
    family = get_family(shipped.family)
    low, full = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (128, 128), "blue")
    batch = processor.apply_chat_template(_tool_conversation(low, full), tools=[tool_schema()], tokenize=True,
                                          return_dict=True, add_generation_prompt=True, return_tensors="pt")
    pads = int((batch["input_ids"] == processor.image_token_id).sum())
    expected = family.visual_tokens(processor, 64, 64) + family.visual_tokens(processor, 128, 128)
    assert pads == expected and family.visual_tokens(processor, 128, 128) > family.visual_tokens(processor, 64, 64)
    assert batch["image_grid_thw"].shape[0] == 2


@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_the_response_parser_reads_a_sampled_tool_turn(name):
    shipped = TOOL_TEMPLATES[name]
    _, processor = build_tiny(shipped.family)
    set_chat_template(processor, shipped.text(), shipped.response_template)
    prefix = render(processor, user_messages("q"), generation_prompt=True)
    parsed = processor.tokenizer.parse_response(tool_turn("too small") + "<|im_end|>", prefix=prefix)
    assert parsed["reasoning_content"] == "too small"
    assert parsed["tool_calls"] == [{"type": "function", "function": {"name": TOOL_NAME,
                                                                       "arguments": {"action": "resize"}}}]


def test_qwen3_vl_tool_template_renders_like_the_original():
    """Where the original Qwen3-VL template works, adaptune's renders the same bytes (the model sees no change)."""
    _, processor = build_tiny("qwen3_vl")
    low, full = Image.new("RGB", (64, 64)), Image.new("RGB", (128, 128))
    for tools in ([tool_schema()], None):
        ours = processor.apply_chat_template(_tool_conversation(low, full), tools=tools, tokenize=False,
                                             add_generation_prompt=True,
                                             chat_template=TOOL_TEMPLATES["qwen3_vl_tools"].text())
        assert ours == processor.apply_chat_template(_tool_conversation(low, full), tools=tools, tokenize=False,
                                                     add_generation_prompt=True)


def test_a_template_that_drops_tool_images_is_refused(tmp_path):
    path = _broken_copy(tmp_path)
    _, processor = build_tiny("qwen2_5_vl")
    with pytest.raises(ChatTemplateError, match=r"model\.chat_template: .*drops images inside tool messages"):
        prepare_chat_template(processor, get_family("qwen2_5_vl"), str(path), tool_calling=True)


# ------------------------------------------------------------------------------------------------ the recipe key


def test_unset_key_switches_qwen2_5_vl_to_the_tool_template_only_for_tool_calling():
    plain = load_model("tiny:qwen2_5_vl")
    assert plain.chat_template == "checkpoint"
    assert plain.processor.chat_template == original_chat_template("qwen2_5_vl")
    with pytest.warns(UserWarning, match="qwen2_5_vl_tools"):
        tools = load_model("tiny:qwen2_5_vl", tool_calling=True)
    assert tools.chat_template == "qwen2_5_vl_tools"
    assert tools.processor.chat_template == TOOL_TEMPLATES["qwen2_5_vl_tools"].text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the original Qwen3-VL template is kept, silently
        assert load_model("tiny:qwen3_vl", tool_calling=True).chat_template == "checkpoint"


def test_a_custom_template_file_changes_the_rendered_prompt(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(TOOL_TEMPLATES["qwen2_5_vl_tools"].text().replace("You are a helpful assistant.",
                                                                     "You are a careful counter."))
    data = {"name": "t", "model": {"source": "tiny:qwen2_5_vl"}, "task": {"name": "vqa_sft"}}
    own = load_for_recipe(load_recipe(data=data))
    mine = load_for_recipe(load_recipe(data=data, overrides=[f"model.chat_template={path}"]))
    question = user_messages("q")[1:]  # no system turn: the template's default system prompt shows
    assert "careful counter" not in render(own.processor, question)
    assert "careful counter" in render(mine.processor, question)
    assert mine.chat_template == str(path)
    # a file without a parser of its own gets the family's, so TRL's tool loop can read its tool calls
    assert tool_template_problems(mine.processor) == []


@pytest.mark.parametrize(("value", "match"), [
    ("qwen9_tools", r"model\.chat_template: .*'qwen9_tools'.*qwen2_5_vl_tools"),
    ("/nowhere/mine.jinja", r"model\.chat_template: template file '/nowhere/mine.jinja' does not exist"),
    ("qwen2_5_vl_tools", r"model\.chat_template: 'qwen2_5_vl_tools' is the qwen2_5_vl template; this model is a "
                         r"qwen3_vl model \(qwen3_vl_tools fits it\)"),
])
def test_bad_values_are_refused_naming_the_key(value, match):
    recipe = load_recipe(data={"name": "t", "model": {"source": "tiny:qwen3_vl", "chat_template": value},
                               "task": {"name": "vqa_sft"}})
    with pytest.raises(RecipeError, match=match):
        load_for_recipe(recipe)


def test_an_encoder_refuses_the_key():
    with pytest.raises(ChatTemplateError, match=r"model\.chat_template: family 'clip' is not a chat model"):
        load_model("tiny:clip", chat_template="qwen3_vl_tools")


# ------------------------------------------------------------------------------------------------ GRPO


def _grpo_recipe(tmp_path: Path, *overrides: str):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_grpo import tiny_recipe

    return tiny_recipe(tmp_path / "run", "training.max_steps=2", "grpo.eval.enabled=false", *overrides)


@pytest.mark.parametrize("family", ["llava", "smolvlm"])
def test_grpo_on_a_family_without_a_tool_template_names_the_key(tmp_path, family):
    from adaptune.rl.trainer import build_grpo_trainer

    recipe = _grpo_recipe(tmp_path, f"model.source=tiny:{family}")
    with pytest.raises(RecipeError, match=rf"visionthink_grpo_tiny.yaml: model\.chat_template: the checkpoint's chat "
                                          rf"template cannot run the resize tool: .*Adaptune ships no tool template "
                                          rf"for family '{family}'; GRPO resolution policies run on"):
        build_grpo_trainer(recipe, tmp_path / "ckpt")


def test_grpo_refuses_the_checkpoint_template_when_asked_to_keep_it(tmp_path):
    from adaptune.rl.trainer import build_grpo_trainer

    recipe = _grpo_recipe(tmp_path, "model.source=tiny:qwen2_5_vl", "model.chat_template=checkpoint")
    with pytest.raises(RecipeError, match=r"model\.chat_template: the checkpoint's chat template cannot run the resize "
                                          r"tool: .*Unset model\.chat_template to use adaptune's 'qwen2_5_vl_tools'"):
        build_grpo_trainer(recipe, tmp_path / "ckpt")


@pytest.mark.parametrize(("family", "choice", "in_use"), [
    ("qwen2_5_vl", None, "qwen2_5_vl_tools"),   # the original Qwen2.5-VL template cannot call tools: switched
    ("qwen3_vl", None, "checkpoint"),           # the original Qwen3-VL template can: kept
    ("qwen3_vl", "qwen3_vl_tools", "qwen3_vl_tools"),
])
def test_grpo_with_the_resize_tool_from_the_original_template(tmp_path, family, choice, in_use):
    """Two real GRPO steps from the family's original template; after a resize the post-tool generation and the
    loss forward hold the low AND the full image's placeholders in their input ids; the adapter moves."""
    from adaptune.rl.trainer import build_grpo_trainer

    overrides = [f"model.source=tiny:{family}", "training.per_device_train_batch_size=8",
                 "grpo.trainer.num_generations=4"]
    if choice:
        overrides.append(f"model.chat_template={choice}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer, parts = build_grpo_trainer(_grpo_recipe(tmp_path, *overrides), tmp_path / "ckpt")
        assert parts.loaded.chat_template == in_use
        assert trainer.chat_template is None  # prefix-preserving: TRL kept the template, swapped in nothing
        processor = parts.loaded.processor
        spec = parts.loaded.family
        low_cost, full_cost = spec.visual_tokens(processor, 64, 64), spec.visual_tokens(processor, 128, 128)
        seen: list[tuple[bool, list[int]]] = []

        def count_placeholders(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[1] > 1:
                seen.append((torch.is_grad_enabled(), (ids == processor.image_token_id).sum(1).tolist()))

        parts.loaded.model.register_forward_pre_hook(count_placeholders, with_kwargs=True)
        trainer.train()
    finally:
        torch.set_num_threads(before)
    assert parts.env_factory.stats.resizes > 0 and trainer.state.global_step == 2
    both = low_cost + full_cost
    assert any(not grad and both in counts for grad, counts in seen)  # the post-tool generation saw the full image
    assert any(grad and both in counts and low_cost in counts for grad, counts in seen)  # and the loss forward
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())
