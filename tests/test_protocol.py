"""The completion parsers (`adaptune.budget.answers`) and the resize-tool protocol (`adaptune.budget.protocol`),
checked part by part: message content shapes, tool-call JSON shapes, the `<think>` head, the answer and `\\boxed{}`
rules, the direct-answer and tool-turn predicates, and the texts and messages the protocol renders. Written against
`make mutate MODULES="answers protocol"` (issue 19): each assert tells a plausible one-line bug apart.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest
from PIL import Image

from adaptune.budget import protocol as P
from adaptune.budget.answers import (
    AssistantTurn,
    ToolCall,
    answer_from_turn,
    assistant_turns,
    count_tool_calls,
    extract_answer,
    extract_boxed,
    is_direct_answer_turn,
    is_tool_turn,
    parse_turn,
)

CALL = '<tool_call>{"name": "resize_image", "arguments": {"action": "resize"}}</tool_call>'


def turn(think, body="", calls=(), at_end=True):
    return AssistantTurn(think=think, body=body, tool_calls=list(calls), calls_at_end=at_end)


RESIZE = ToolCall("resize_image", {"action": "resize"})


# ------------------------------------------------------------------------------------------------- answers.py


def test_turn_defaults():
    t = AssistantTurn("t", "b")
    assert t.tool_calls == [] and t.calls_at_end is True
    assert AssistantTurn("t", "b").tool_calls is not t.tool_calls


def test_content_parts_join_only_text_parts():
    assert parse_turn(None).body == ""
    parts = [{"type": "text", "text": "a"}, {"type": "image", "text": "IMG"}, {"text": "b"}, "loose string",
             {"type": "text", "text": 5}, {"type": "text"}, {"type": "text", "text": "c"}]
    assert parse_turn(parts).body == "abc"  # a part without "type" is text; non-str text dropped; no separator
    assert parse_turn(42).body == "42"


def test_tool_call_json_shapes():
    calls = assistant_turns(
        "<tool_call> \n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n </tool_call>"
        "<tool_call>{\"name\": \"b\"}</tool_call>"              # no arguments: {}
        "<tool_call>{\"name\": \"c\", \"arguments\": \"{\\\"y\\\": 2}\"}</tool_call>"  # arguments as a JSON string
        "<tool_call>{\"name\": \"d\", \"arguments\": \"{bad\"}</tool_call>"
        "<tool_call>{\"name\": \"e\", \"arguments\": [1]}</tool_call>"
        "<tool_call>{\"name\": 7, \"arguments\": {}}</tool_call>"
        "<tool_call>[1, 2]</tool_call>"
        "<tool_call>{not json</tool_call>")[0].tool_calls
    assert calls == [ToolCall("a", {"x": 1}), ToolCall("b", {}), ToolCall("c", {"y": 2}), ToolCall("d", None),
                     ToolCall("e", None), ToolCall(None, {}), ToolCall(None, None), ToolCall(None, None)]


def test_structured_calls_come_first_in_both_shapes():
    message = {"role": "assistant", "content": "<think>t</think>" + CALL.replace("resize_image", "inline"),
               "tool_calls": [{"type": "function", "function": {"name": "fn", "arguments": '{"k": "v"}'}},
                              {"name": "flat", "arguments": {"k": 1}}, "garbage"]}
    (parsed,) = assistant_turns(message)
    assert parsed.tool_calls == [ToolCall("fn", {"k": "v"}), ToolCall("flat", {"k": 1}), ToolCall(None, None),
                                 ToolCall("inline", {"action": "resize"})]
    assert parsed.think == "t" and parsed.body == "" and parsed.calls_at_end


def test_think_head_reasoning_field_and_body():
    t = parse_turn("  <think> a\nb </think>  rest  ")
    assert (t.think, t.body) == (" a\nb ", "rest")
    t = parse_turn("x <think>a</think> rest")  # not at the head: no reasoning, the text is the body
    assert (t.think, t.body) == (None, "x <think>a</think> rest")
    t = parse_turn("<think>a</think>b</think>c")  # non-greedy: the first closing tag ends the reasoning
    assert (t.think, t.body) == ("a", "b</think>c")
    t = parse_turn("<think>inline</think> body", reasoning="parsed")
    assert (t.think, t.body) == ("parsed", "<think>inline</think> body")
    t = parse_turn("<think>inline</think> body", reasoning="  \n")  # blank parsed reasoning: read the head
    assert (t.think, t.body) == ("inline", "body")


def test_inline_calls_at_end_and_removed_from_the_body():
    t = parse_turn("<think>t</think> pre " + CALL + " \n " + CALL + "\n")
    assert t.body == "pre" and len(t.tool_calls) == 2 and t.calls_at_end
    t = parse_turn("<think>t</think>" + CALL + " post")
    assert t.body == "post" and not t.calls_at_end
    t = parse_turn("<think>t</think> just text")
    assert t.tool_calls == [] and t.calls_at_end


def test_assistant_turns_roles_and_shapes():
    assert assistant_turns(None) == [] and assistant_turns([]) == []
    messages = [{"role": "user", "content": "<answer>u</answer>"}, {"content": "<answer>1</answer>"},
                {"role": "tool", "content": "<answer>t</answer>"}, "not a message",
                {"role": "assistant", "content": "<answer>2</answer>", "reasoning_content": 5}]
    turns = assistant_turns(messages)
    assert [answer_from_turn(t) for t in turns] == ["1", "2"]
    assert turns[1].think is None  # a non-string reasoning_content is ignored
    single = assistant_turns({"role": "assistant", "content": "<think>r</think><answer>3</answer>"})
    assert len(single) == 1 and single[0].think == "r"
    reasoned = assistant_turns([{"role": "assistant", "reasoning_content": "why", "content": "<answer>4</answer>"}])
    assert reasoned[0].think == "why" and reasoned[0].body == "<answer>4</answer>"


def test_boxed_rules():
    assert extract_boxed("\\boxed{ a{b}c }") == "a{b}c"
    assert extract_boxed("{x} \\boxed{1} then \\boxed{{2}}") == "{2}"
    assert extract_boxed("\\boxed{}") == ""
    assert extract_boxed("\\boxed{a{b}") is None
    assert extract_boxed("\\boxed{a} }") == "a"
    assert extract_boxed("boxed{a}") is None
    assert extract_boxed("\\boxed{a}b}") == "a"


def test_answer_from_turn_rules():
    assert answer_from_turn(turn("t", "<answer> 1 </answer><answer> 2 </answer>")) == "2"
    assert answer_from_turn(turn("t", "<answer>x \\boxed{ 5 } y</answer>")) == "5"
    assert answer_from_turn(turn("t", "<answer>\\boxed{ }</answer>")) is None
    assert answer_from_turn(turn("t", "<answer>a\nb</answer>")) == "a\nb"
    assert answer_from_turn(turn("t", "no tags")) is None
    assert extract_answer([{"role": "assistant", "content": "<answer>1</answer>"},
                           {"role": "user", "content": "<answer>2</answer>"}]) == "1"


def test_count_tool_calls_over_turns_and_by_name():
    completion = [{"role": "assistant", "content": CALL + CALL.replace("resize_image", "other")},
                  {"role": "tool", "content": CALL},
                  {"role": "assistant", "content": CALL}]
    assert count_tool_calls(completion) == 3
    assert count_tool_calls(completion, "resize_image") == 2
    assert count_tool_calls(completion, "other") == 1
    assert count_tool_calls("no calls") == 0


@pytest.mark.parametrize(("t", "ok"), [
    (turn("why", "<answer>7</answer>"), True),
    (turn("why", "<answer>\n7\n</answer>"), True),
    (turn(None, "<answer>7</answer>"), False),
    (turn(" \n", "<answer>7</answer>"), False),
    (turn("a <answer>", "<answer>7</answer>"), False),
    (turn("a </tool_call>", "<answer>7</answer>"), False),
    (turn("why", "<answer>7</answer>", [RESIZE]), False),
    (turn("why", "<answer> </answer>"), False),
    (turn("why", "<answer>7</answer>."), False),
    (turn("why", "x<answer>7</answer>"), False),
    (turn("why", "<answer>7 <think></answer>"), False),
    (turn("why", "<answer>a</answer><answer>b</answer>"), False),
])
def test_direct_answer_turn(t, ok):
    assert is_direct_answer_turn(t) is ok


ARGS = MappingProxyType({"action": "resize"})


@pytest.mark.parametrize(("t", "arguments", "ok"), [
    (turn("why", "", [RESIZE]), ARGS, True),
    (turn("why", "", [RESIZE]), None, True),
    (turn("why", "", [ToolCall("resize_image", {"action": "zoom"})]), None, True),   # any arguments when None
    (turn("why", "", [ToolCall("resize_image", {"action": "zoom"})]), ARGS, False),
    (turn("why", "", [ToolCall("resize_image", None)]), ARGS, False),
    (turn("why", "", [ToolCall("zoom", {"action": "resize"})]), ARGS, False),
    (turn("why", "", [RESIZE, RESIZE]), ARGS, False),
    (turn("why", "", []), ARGS, False),
    (turn("why", "text", [RESIZE]), ARGS, False),
    (turn("why", "", [RESIZE], at_end=False), ARGS, False),
    (turn(None, "", [RESIZE]), ARGS, False),
    (turn("  ", "", [RESIZE]), ARGS, False),
    (turn("a <think> b", "", [RESIZE]), ARGS, False),
])
def test_tool_turn(t, arguments, ok):
    assert is_tool_turn(t, "resize_image", arguments) is ok


# ------------------------------------------------------------------------------------------------ protocol.py


def test_protocol_texts_and_messages():
    assert P.TOOL_NAME == "resize_image" and dict(P.RESIZE_ARGUMENTS) == {"action": "resize"}
    assert P.tool_call_text() == ('<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n'
                                  '</tool_call>')
    assert P.direct_prefix() == "<think>I can answer from this image.</think><answer>"
    assert P.direct_prefix("t") == "<think>t</think><answer>"
    assert P.direct_answer("t", "a") == "<think>t</think><answer>a</answer>"
    assert P.tool_turn("t") == "<think>t</think>\n" + P.tool_call_text()
    assert P.tool_call() == {"type": "function",
                             "function": {"name": "resize_image", "arguments": {"action": "resize"}}}
    assert P.tool_call_message() == {"role": "assistant", "content": f"<think>{P.RESIZE_THOUGHT}</think>",
                                     "tool_calls": [P.tool_call()]}
    assert P.tool_call_message(None, "b") == {"role": "assistant", "content": "b", "tool_calls": [P.tool_call()]}
    assert P.tool_call_message(None)["content"] == ""
    assert P.tool_result_message() == {"role": "tool", "name": "resize_image", "content": [
        {"type": "image"}, {"type": "text", "text": P.TOOL_RESULT_TEXT}]}
    image = Image.new("RGB", (4, 4))
    assert P.user_messages("q?") == [{"role": "system", "content": P.SYSTEM_PROMPT},
                                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q?"}]}]
    assert P.user_messages("q?", image)[1]["content"][0] == {"type": "image", "image": image}


def test_tool_schema_and_render_pass_the_schema_and_flags():
    schema = P.tool_schema()
    assert schema["function"]["name"] == "resize_image"
    assert list(schema["function"]["parameters"]["properties"]) == ["action"]
    assert schema["function"]["parameters"]["required"] == ["action"]

    class Recorder:
        def apply_chat_template(self, messages, **kwargs):
            self.seen = (messages, kwargs)
            return "rendered"

    processor, messages = Recorder(), [{"role": "user", "content": "hi"}]
    assert P.render(processor, messages) == "rendered"
    assert processor.seen == (messages, {"tools": [schema], "tokenize": False, "add_generation_prompt": False})
    P.render(processor, messages, generation_prompt=True)
    assert processor.seen[1]["add_generation_prompt"] is True

    class Env(P.ResizeTool):
        def _full_image_blocks(self, action):
            return [{"type": "text", "text": action}]

    assert Env().resize_image("resize") == [{"type": "text", "text": "resize"}]


def test_is_resize_call():
    assert P.is_resize_call(P.tool_turn("x"))
    assert P.is_resize_call([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": P.tool_turn("x")}])
    assert not P.is_resize_call([{"role": "assistant", "content": P.tool_turn("x")},
                                 {"role": "assistant", "content": "a"}])  # only the LAST turn counts
    assert not P.is_resize_call([])
    assert not P.is_resize_call(P.tool_turn("x") + P.tool_call_text())  # two calls
    assert not P.is_resize_call(P.tool_call_text().replace("resize_image", "zoom"))
    assert not P.is_resize_call(P.tool_call_text().replace('"resize"}', '"resize", "x": 1}'))


def test_turn_format():
    assert P.turn_format(P.tool_turn("t")) == "tool"
    assert P.turn_format(P.direct_answer("t", "a")) == "answer"
    assert P.turn_format("<think>t</think>" + P.tool_call_text().replace('"resize"}', '"zoom"}')) is None
    assert P.turn_format([]) is None
    two = [{"role": "assistant", "content": P.direct_answer("t", "a")}] * 2
    assert P.turn_format(two) is None


def test_check_format_counts_tool_calls_and_checks_tool_turns():
    tool = {"role": "assistant", "content": P.tool_turn("t")}
    result = P.tool_result_message()
    answer = {"role": "assistant", "content": P.direct_answer("t", "a")}
    assert P.check_format([tool, result, answer])
    assert not P.check_format([tool, result, tool, result, answer])
    assert P.check_format([tool, result, tool, result, answer], max_tool_calls=2)
    assert not P.check_format([tool, result, answer], max_tool_calls=0)
    zoom = {"role": "assistant", "content": "<think>t</think>" + CALL.replace("resize_image", "zoom")}
    assert not P.check_format([zoom, result, answer])
    assert P.check_format([zoom, result, answer], tool_name="zoom")
    odd = {"role": "assistant", "content": "<think>t</think>" + CALL.replace('"resize"', '"shrink"')}
    assert not P.check_format([odd, result, answer])
    assert P.check_format([odd, result, answer], tool_arguments=None)
    assert not P.check_format([answer, result, answer])
