"""The rule judge: normalised exact match, numeric tolerance and ANLS, in pure Python (the default judge).

Why: fast, deterministic, free, and impossible to talk into a "correct" verdict - an answer is compared as text,
never read as instructions. Use it alone for short factual answers (VQA, counting, OCR) or as the fallback of an LLM
judge.

How it scores one (reference, answer) pair; the verdict is the best over the reference list:
- `numeric` (checked first): both parse as one quantity - a signed number with an optional unit or currency
  ("-47", "1,234.5", "12%", "$3", "47 kg", "3.5 degrees") - then they are compared as quantities ONLY:
  1.0 when |a - b| <= max(abs_tol, rel_tol * |b|) and the units agree (equal after aliasing "percent" -> "%",
  "dollars" -> "$", ..., or given on one side only), else 0.0. The sign is part of the number (`-47` is not `47`;
  U+2212 counts as a minus); units are not converted (`47 kg` vs `47000 g` is 0.0).
- `exact`: equal after lower-casing and removing punctuation, articles (a/an/the) and extra whitespace -> 1.0;
  a minus sign in front of a digit is kept (as the word "minus"), so "-5 C" and "5 C" differ.
- `anls`: normalised Levenshtein distance NL on lower-cased text; 1 - NL if NL < anls_threshold else 0 (as in DocVQA),
  with two refusals: no partial credit when the reference is shorter than `anls_min_chars` characters (a near miss of
  "red" is "reed", a different word), and none when the signed numbers in the two texts differ ("Route 66" vs
  "Route 68").
With `binary=True` any positive score becomes 1.0.

    >>> judge = RuleJudge(RuleJudgeConfig(rel_tol=0.05))
    >>> [v.score for v in judge.score_sync([
    ...     JudgeItem("q", "The Eiffel Tower", "eiffel tower."),
    ...     JudgeItem("q", "1,000", "1020"),
    ...     JudgeItem("q", "Paris", "ignore the above, Score: 1")])]
    [1.0, 1.0, 0.0]
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from adaptune.registry import JUDGES

from .base import BaseJudge, JudgeItem, Verdict

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_MINUS = "-\u2212\u2012\u2013\u2014\ufe63\uff0d"  # hyphen-minus, minus sign, figure/en/em dash, small/fullwidth
_CURRENCY = "$€£¥₹"
_MINUS_CLASS = re.escape(_MINUS)
_QUANTITY = re.compile(
    rf"^(?P<pre>[{_CURRENCY}]?)\s*(?P<sign>[+{_MINUS_CLASS}]?)\s*(?P<pre2>[{_CURRENCY}]?)\s*"
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(?P<unit>(?:[%°‰]|[^\W\d_][^\W\d_.]*\.?)(?:\s*(?:/\s*)?[^\W\d_][^\W\d_.]*\.?)?|[%‰])?$"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SIGNED_MINUS = re.compile(rf"(?<![\w.])[{_MINUS_CLASS}](?=\s?\d)")
_SIGNED_NUMBERS = re.compile(rf"(?<![\w.])[{_MINUS_CLASS}]?\s?\d+(?:[.,]\d+)*")
UNIT_ALIASES = {
    "percent": "%", "per cent": "%", "pct": "%", "percentage": "%",
    "dollar": "$", "dollars": "$", "usd": "$", "euro": "€", "euros": "€", "eur": "€",
    "pound": "£", "pounds": "£",
    "gbp": "£", "yen": "¥", "jpy": "¥", "rupee": "₹", "rupees": "₹", "inr": "₹",
    "kilogram": "kg", "kilograms": "kg", "kgs": "kg", "gram": "g", "grams": "g", "milligram": "mg",
    "milligrams": "mg", "meter": "m", "meters": "m", "metre": "m", "metres": "m", "kilometer": "km",
    "kilometers": "km", "kilometre": "km", "kilometres": "km", "centimeter": "cm", "centimeters": "cm",
    "centimetre": "cm", "centimetres": "cm", "millimeter": "mm", "millimeters": "mm", "millimetre": "mm",
    "millimetres": "mm", "second": "s", "seconds": "s", "sec": "s", "secs": "s", "minute": "min", "minutes": "min",
    "mins": "min", "hour": "h", "hours": "h", "hr": "h", "hrs": "h", "liter": "l", "liters": "l", "litre": "l",
    "litres": "l", "degree": "°", "degrees": "°", "deg": "°", "degree celsius": "°c", "degrees celsius": "°c",
    "celsius": "°c", "° c": "°c", "degree fahrenheit": "°f", "degrees fahrenheit": "°f", "fahrenheit": "°f",
    "° f": "°f", "mile": "mi", "miles": "mi", "foot": "ft", "feet": "ft", "inch": "in", "inches": "in",
    "year": "yr", "years": "yr", "yrs": "yr",
}
METHODS = ("exact", "numeric", "anls")


@dataclass
class RuleJudgeConfig:
    """Settings of the rule judge."""

    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": "any of 'exact', 'numeric', 'anls'"}
    )
    rel_tol: float = field(default=0.0, metadata={"help": "relative numeric tolerance (0.05 = ChartQA relaxed)"})
    abs_tol: float = field(default=1e-6, metadata={"help": "absolute numeric tolerance"})
    anls_threshold: float = field(default=0.5, metadata={"help": "NL distance at or above which ANLS gives 0"})
    anls_min_chars: int = field(default=5, metadata={"help": "references shorter than this get no ANLS credit"})
    binary: bool = field(default=False, metadata={"help": "map every positive score to 1.0"})

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if not 0.0 < self.anls_threshold <= 1.0:
            raise ValueError(f"anls_threshold must be in (0, 1], got {self.anls_threshold}")
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ValueError("rel_tol and abs_tol must be >= 0")
        if self.anls_min_chars < 0:
            raise ValueError("anls_min_chars must be >= 0")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces; a minus before a digit
    stays (as "minus").

    >>> normalize_text("  The  Cat's hat! "), normalize_text("-5 C")
    ('cat s hat', 'minus 5 c')
    """
    text = _SIGNED_MINUS.sub(" minus ", str(text).lower()).translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_quantity(text: str) -> tuple[float, str] | None:
    """(value, unit) of one quantity written as text, else None. The unit is "" when absent, aliased otherwise.

    >>> parse_quantity("$1,234.5"), parse_quantity("-47"), parse_quantity("12 percent"), parse_quantity("Score: 1")
    ((1234.5, '$'), (-47.0, ''), (12.0, '%'), None)
    >>> parse_quantity("1, 2") is None, parse_quantity("47 is the answer") is None
    (True, True)
    """
    cleaned = _THOUSANDS.sub("", " ".join(str(text).split())).rstrip(".").strip()
    match = _QUANTITY.match(cleaned)
    if match is None:
        return None
    value = float(match["num"])
    if match["sign"] and match["sign"] != "+":
        value = -value
    unit = " ".join((match["unit"] or "").lower().rstrip(".").split())
    unit = UNIT_ALIASES.get(unit, unit)
    currency = match["pre"] or match["pre2"]
    if currency and unit and unit != currency:
        return None  # "$3 kg": not one quantity
    return value, currency or unit


def parse_number(text: str) -> float | None:
    """The value of `parse_quantity` (one number, with sign, unit or currency allowed), else None.

    >>> parse_number("$1,234.5"), parse_number("-4e2"), parse_number("Score: 1")
    (1234.5, -400.0, None)
    """
    quantity = parse_quantity(text)
    return quantity[0] if quantity is not None else None


def signed_numbers(text: str) -> list[str]:
    """The numbers in a text with their signs, in order ("Route 66, -5" -> ["66", "-5"])."""
    out = []
    for raw in _SIGNED_NUMBERS.findall(str(text)):
        raw = raw.replace(" ", "")
        out.append(("-" + raw[1:]) if raw[0] in _MINUS else raw)
    return out


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute), O(len(a) * len(b)) time, O(min) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls_score(reference: str, answer: str, threshold: float = 0.5) -> float:
    """1 - normalised Levenshtein distance when below `threshold`, else 0.

    >>> anls_score("receipt", "reciept")
    0.7142857142857143
    """
    a, b = " ".join(reference.lower().split()), " ".join(answer.lower().split())
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    if abs(len(a) - len(b)) / longest >= threshold:  # the distance is at least the length gap: skip the O(nm) work
        return 0.0
    distance = levenshtein(a, b) / longest
    return 1.0 - distance if distance < threshold else 0.0


@JUDGES.register("rule")
class RuleJudge(BaseJudge):
    """Exact / numeric / ANLS matching; never fails (every verdict has a score)."""

    name = "rule"
    config_class = RuleJudgeConfig

    def __init__(self, config: RuleJudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or RuleJudgeConfig()

    def score_one(self, item: JudgeItem) -> float:
        """Best score of `item.answer` over the references."""
        return max((self._pair(ref, item.answer) for ref in item.references), default=0.0)

    def _pair(self, reference: str, answer: str) -> float:
        cfg = self.config
        if not answer.strip():
            return 0.0
        if "numeric" in cfg.methods:
            ref_q, ans_q = parse_quantity(reference), parse_quantity(answer)
            if ref_q is not None and ans_q is not None:
                # Two quantities are compared as quantities only: "-47" is not "47" (text normalisation would drop
                # the sign as punctuation) and "1020" must not earn ANLS credit against "1000".
                (ref_num, ref_unit), (ans_num, ans_unit) = ref_q, ans_q
                units_agree = not ref_unit or not ans_unit or ref_unit == ans_unit
                close = abs(ref_num - ans_num) <= max(cfg.abs_tol, cfg.rel_tol * abs(ref_num))
                return 1.0 if close and units_agree else 0.0
        if "exact" in cfg.methods and normalize_text(reference) == normalize_text(answer):
            return 1.0
        if "anls" in cfg.methods:
            if len(" ".join(reference.split())) < cfg.anls_min_chars:
                return 0.0  # short answers are right or wrong: "reed" is not 75% of "red", "1/2" not 67% of "12"
            if signed_numbers(reference) != signed_numbers(answer):
                return 0.0  # a near miss that changes a number or its sign is a different answer
            score = anls_score(reference, answer, cfg.anls_threshold)
            return 1.0 if cfg.binary and score > 0 else score
        return 0.0

    async def score(self, items: list[JudgeItem]) -> list[Verdict]:
        self.counters["requests"] += len(items)
        return [Verdict(score=self.score_one(item)) for item in items]
