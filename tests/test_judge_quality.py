"""Judge quality: the shipped labelled set matches its generator, `evaluate_judge` counts agreement / parse rate /
categories right (checked against judges whose verdicts are known), and `adaptune judge-eval` prints them."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from adaptune.cli import main
from adaptune.rl.judges import HFJudge, HFJudgeConfig, build_judge
from adaptune.rl.judges.eval_set import CATEGORIES, glyphqa_judge_rows
from adaptune.rl.judges.quality import default_set_path, evaluate_judge, judge_spec, load_labelled


def test_shipped_set_is_the_generator_output() -> None:
    shipped = [json.loads(line) for line in default_set_path().read_text(encoding="utf-8").splitlines()]
    assert shipped == glyphqa_judge_rows(seed=0, num_scenes=8)  # rerun tools/make_judge_eval_set.py if this fails
    assert len(shipped) >= 300 and len({r["id"] for r in shipped}) == len(shipped)
    assert Counter(r["category"] for r in shipped) == {c: len(shipped) // len(CATEGORIES) for c in CATEGORIES}
    by_cat = {r["category"]: r for r in shipped if r["qtype"] == "count_total"}
    assert by_cat["synonym"]["answer"] in ("one", "two", "three", "four", "five", "six")  # number words
    assert "CORRECT" in by_cat["injection"]["answer"] and not by_cat["injection"]["correct"]
    assert all(r["correct"] == (r["category"] in ("exact", "sentence", "synonym")) for r in shipped)


def _scripted(say_correct):
    """An hf judge that says CORRECT exactly when `say_correct(question, reference, answer)`; None -> an unparseable
    reply. It reads the three fields back from the quoted prompt."""
    def field(prompt: str, label: str) -> str:
        return prompt.split(f"BEGIN {label}\n| ")[1].split(f"\nEND {label}")[0]

    def generate(batch):
        out = []
        for messages in batch:
            prompt = messages[1]["content"]
            decision = say_correct(*(field(prompt, k) for k in ("QUESTION", "REFERENCE ANSWER", "CANDIDATE ANSWER")))
            out.append("no idea" if decision is None else f"VERDICT: {'CORRECT' if decision else 'INCORRECT'}")
        return out
    return HFJudge(HFJudgeConfig(verdict="generate"), generate_fn=generate)


def test_agreement_parse_rate_and_categories_are_counted_right() -> None:
    rows = load_labelled()
    truth = {(r.question, r.reference, r.answer): r.correct for r in rows}
    perfect = evaluate_judge(_scripted(lambda *qra: truth[qra]), rows, name="perfect")
    assert perfect.agreement == 1.0 and perfect.parse_rate == 1.0 and perfect.confusion["failed"] == 0
    yes = evaluate_judge(_scripted(lambda *qra: True), rows, name="always-correct")
    share_correct = sum(r.correct for r in rows) / len(rows)
    assert yes.agreement == pytest.approx(share_correct)
    assert yes.by_category["injection"]["agreement"] == 0.0 and yes.by_category["synonym"]["agreement"] == 1.0
    silent = evaluate_judge(_scripted(lambda q, r, a: None if "or" in a.split() else truth[q, r, a]), rows)
    hedges = sum(r.category == "hedge" for r in rows)
    assert silent.parse_rate == pytest.approx(1 - hedges / len(rows))
    assert silent.agreement == silent.parse_rate  # failures count as disagreements
    assert silent.by_category["hedge"] == {"rows": hedges, "agreement": 0.0, "parse_rate": 0.0}


def test_rule_judge_on_the_set_misses_synonyms_but_not_injections() -> None:
    report = evaluate_judge(build_judge("rule"), load_labelled(), name="rule")
    assert report.parse_rate == 1.0
    assert report.by_category["exact"]["agreement"] == 1.0
    assert report.by_category["injection"]["agreement"] == 1.0
    assert report.by_category["synonym"]["agreement"] < 0.5  # "crimson" for red, "three" for 3: exact match says no
    assert report.seconds_per_verdict < 0.01


def test_load_labelled_names_the_bad_row(tmp_path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "q", "reference": "a", "answer": "a", "correct": true}\n'
                    '{"question": "q", "reference": "a", "answer": "a", "correct": "yes"}\n')
    with pytest.raises(ValueError, match=r"set.jsonl:2: 'correct' must be true or false"):
        load_labelled(path)
    path.write_text('{"question": "q", "answer": "a", "correct": true}\n')
    with pytest.raises(ValueError, match=r"set.jsonl:1: missing key\(s\) \['reference'\]"):
        load_labelled(path)
    with pytest.raises(ValueError, match="not key=value"):
        judge_spec("rule", ["threshold"])
    assert judge_spec('{"name": "embedding"}', ["threshold=0.8"]) == {"name": "embedding", "threshold": 0.8}


def test_judge_eval_command(capsys) -> None:
    assert main(["judge-eval", "rule", "--limit", "14", "-o", "rel_tol=0.0"]) == 0
    out = capsys.readouterr().out
    assert "on 14 rows: agreement" in out and "| synonym | 2 |" in out
    assert main(["judge-eval", "rule", "--limit", "7", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["rows"] == 7 and figures["parse_rate"] == 1.0
    assert main(["judge-eval", "rule", "-o", "no_such_key=1"]) == 2  # unknown judge key: one line, exit code 2
