"""Recipes: plain YAML validated against typed dataclasses (OmegaConf structured configs).

A recipe says which model to load, which task to train on, which adapter to attach and how to train:

    name: qwen3_vl-glyphqa-lora
    model: {source: default}
    task: {name: vqa_sft, params: {dataset: glyphqa, num_train: 2000}}
    adapter: {method: lora, params: {r: 8}}
    budget: {reducer: divprune, tokens: 4}             # optional: a training-free token reducer
    training: {max_steps: 200, per_device_train_batch_size: 16, learning_rate: 1e-3}

Each component validates its own section (`task.params` against the task's `Params`, `adapter.params` against the
PEFT config class), so unknown keys and wrong types fail before any work, naming the key path and the file.
`load_recipe(path, ["training.max_steps=10"])` applies command-line overrides on top.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


@dataclass
class ModelSection:
    source: str = "default"
    """"default" (the embedded GlyphQA VLM), "tiny:<family>", a local folder, or a hub id."""
    family: str | None = None
    quantization: str | None = None
    """None, "nf4" or "int8" (bitsandbytes); the vision tower and replaced modules stay in full precision."""
    dtype: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    chat_template: str | None = None
    """Unset: the checkpoint's own template (a GRPO recipe switches to adaptune's tool template for the family when
    the checkpoint's cannot run the resize tool); "checkpoint": always its own; "qwen2_5_vl_tools" /
    "qwen3_vl_tools": adaptune's; or a path to a .jinja file (docs/visionthink.md#chat-templates)."""


@dataclass
class TaskSection:
    name: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdapterSection:
    method: str = "lora"
    """"lora", any registered adaptune method (see `adaptune info`), or "none" (train nothing; evaluate only)."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BudgetSection:
    reducer: str | None = None
    """A training-free token reducer (`adaptune info` lists them: fastervlm, divprune, tome, ...) applied after the
    vision encoder, in training and in evaluation; needs a task that can build batches at a budget (vqa_sft)."""
    tokens: int | None = None
    """Visual tokens per image the reducer keeps."""


@dataclass
class TrainingSection:
    max_steps: int = 100
    """Optimizer steps; 0 trains nothing (evaluation only: the untrained adapter is saved and evaluated)."""
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0
    """Warm-up steps (an int) or a fraction of max_steps (a float below 1), as in `TrainingArguments`."""
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    eval_steps: int = 0
    """Evaluate every `eval_steps` steps during training (0: only at the end)."""
    eval_limit: int | None = 200
    seed: int = 0
    bf16: bool = False
    """bf16 mixed precision; refused (RecipeError) on a device that cannot run it, never dropped silently."""
    report_to: Any = "none"
    """Where the Trainer logs go besides metrics.jsonl: "none", an integration name ("tensorboard", "trackio",
    "wandb", ...) or a list of them, as in `TrainingArguments.report_to`. TensorBoard needs `adaptune[tensorboard]`."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More `transformers.TrainingArguments` fields (validated against that class)."""


@dataclass
class OutputSection:
    dir: str | None = None
    """The run directory; `runs/<name>` when unset."""
    overwrite: bool = False


@dataclass
class Recipe:
    name: str = MISSING
    description: str = ""
    kind: str = "adapter"
    """"adapter" (supervised/self-supervised adapter training) or "grpo" (a resolution policy with TRL GRPO)."""
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    """A training-free visual-token budget (learned budget methods such as TokenFLEX take theirs from adapter.params)."""
    training: TrainingSection = field(default_factory=TrainingSection)
    output: OutputSection = field(default_factory=OutputSection)
    grpo: dict[str, Any] = field(default_factory=dict)
    """The GRPO section (environment, rewards, judge, GRPOConfig fields), validated by `adaptune.rl`."""
    resume: bool = False
    source_file: str | None = None


# `training:` keys that adaptune once named its own way; they are the `TrainingArguments` names now.
RENAMED_TRAINING_KEYS = {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
                         "lr_scheduler": "lr_scheduler_type", "warmup": "warmup_steps"}


def _refuse_renamed(keys: Any, where: str) -> None:
    for key in keys:
        if key in RENAMED_TRAINING_KEYS:
            raise RecipeError(f"{where}: training.{key}: renamed to training.{RENAMED_TRAINING_KEYS[key]} "
                              "(the transformers.TrainingArguments name)")


def _explain(exc: OmegaConfBaseException, where: str) -> RecipeError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).split("\n")[0]
    return RecipeError(f"{where}: {'key ' + repr(key) + ': ' if key else ''}{msg}")


def is_override(arg: str) -> bool:
    """The command line's one rule for `key=value`: an argument is a recipe override when the text before its first
    `=` is a dotted key (letters, digits, `_`, `-`, `.`; e.g. `training.max_steps=10`) and the argument is not an
    existing file or folder. So `runs/lr=1e-3` (a `/` in the key) and an existing `lr=1e-3.yaml` are paths."""
    key, sep, _ = arg.partition("=")
    if not sep or not key or not (key[0].isalpha() or key[0] == "_"):
        return False
    if not all(ch.isalnum() or ch in "_-." for ch in key):
        return False
    return not Path(arg).exists()


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(targets, overrides) of a command's positional arguments, by `is_override`; order kept in each."""
    return [a for a in args if not is_override(a)], [a for a in args if is_override(a)]


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe file (or a dict), apply `key=value` overrides, return a typed `Recipe`."""
    schema = OmegaConf.structured(Recipe)
    where = str(path) if path is not None else "<recipe>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {where} does not exist")
        try:
            raw = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise RecipeError(f"{where}: not valid YAML: {exc}") from None
        if not isinstance(raw, DictConfig):
            raise RecipeError(f"{where}: a recipe must be a mapping at the top level")
    else:
        raw = OmegaConf.create(data or {})
    training = raw.get("training") if isinstance(raw, DictConfig) else None
    if isinstance(training, DictConfig):
        _refuse_renamed(training.keys(), where)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise _explain(exc, where) from None
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value")
        key = item.split("=", 1)[0].strip()
        if key.startswith("training."):
            _refuse_renamed([key.split(".")[1]], f"{where} (override {item!r})")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"{where} (override {item!r})") from None
    try:
        OmegaConf.resolve(merged)
        recipe: Recipe = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise _explain(exc, where) from None
    recipe.source_file = where
    check_recipe_values(recipe)
    return recipe


# TrainingArguments fields a recipe may not set through training.extra: the run directory owns where checkpoints go
# (resume finds them only under <run>/checkpoints) and whether losses are filtered.
RESERVED_TRAINING_EXTRA = {"output_dir": "checkpoints always go to <output.dir>/checkpoints; set output.dir instead",
                   "overwrite_output_dir": "use output.overwrite",
                   "resume_from_checkpoint": "use resume=true",
                   "logging_nan_inf_filter": "adaptune logs non-finite losses as they are and stops the run"}


def check_recipe_values(recipe: Recipe) -> None:
    """Training values that would train nothing, crash mid-run or write outside the run: refused up front.

    Runs inside `load_recipe` and again before a run directory is touched (a recipe may be edited in code).
    `training.max_steps: 0` is allowed and means "evaluate only" (nothing is trained)."""
    where = recipe.source_file or "<recipe>"
    t = recipe.training

    def bad(key: str, why: str) -> RecipeError:
        return RecipeError(f"{where}: training.{key}: {why}, got {getattr(t, key)!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for key, low in (("max_steps", 0), ("per_device_train_batch_size", 1), ("gradient_accumulation_steps", 1),
                     ("logging_steps", 1), ("save_steps", 1), ("save_total_limit", 1), ("eval_steps", 0), ("seed", 0)):
        value = getattr(t, key)
        if not is_int(value) or value < low:
            raise bad(key, f"must be an integer >= {low}" + (" (0: evaluate only)" if key == "max_steps" else ""))
    if t.eval_limit is not None and (not is_int(t.eval_limit) or t.eval_limit < 1):
        raise bad("eval_limit", "must be null or an integer >= 1")
    if not finite(t.learning_rate) or t.learning_rate <= 0:
        raise bad("learning_rate", "must be a finite number > 0")
    for key in ("weight_decay", "warmup_steps", "max_grad_norm"):
        if not finite(getattr(t, key)) or getattr(t, key) < 0:
            raise bad(key, "must be a finite number >= 0")
    if not isinstance(t.extra, dict):
        raise RecipeError(f"{where}: training.extra must be a mapping")
    for key, why in RESERVED_TRAINING_EXTRA.items():
        if key in t.extra:
            raise RecipeError(f"{where}: training.extra.{key}: not allowed ({why})")
    own = {f.name for f in dataclasses.fields(TrainingSection)} - {"extra"}
    for key in t.extra:
        if key in own:
            raise RecipeError(f"{where}: training.extra.{key}: a training field; set training.{key} instead")
    reports = [t.report_to] if isinstance(t.report_to, str) else t.report_to
    if not isinstance(reports, list) or not reports or not all(isinstance(r, str) and r for r in reports):
        raise bad("report_to", 'must be "none", an integration name or a list of names')
    if recipe.output.dir is not None and not str(recipe.output.dir).strip():
        raise RecipeError(f"{where}: output.dir: empty (leave it unset for runs/<name>)")
    try:
        from transformers.trainer_utils import SchedulerType
    except ImportError:  # pragma: no cover
        return
    known = [s.value for s in SchedulerType]
    if t.lr_scheduler_type not in known:
        raise RecipeError(f"{where}: training.lr_scheduler_type: unknown scheduler {t.lr_scheduler_type!r} "
                          f"(known: {', '.join(known)})")


def validate_params(params: dict[str, Any], schema: type, where: str) -> Any:
    """Build `schema` (a dataclass) from `params`; unknown keys and wrong types name `where.<key>`."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    known = {f.name for f in dataclasses.fields(schema) if f.init}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    values = {key: _check_type(schema, key, value, where) for key, value in params.items()}
    try:
        return schema(**values)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _check_type(schema: type, key: str, value: Any, where: str) -> Any:
    """Convert/check one value against the field's annotation (types OmegaConf cannot express pass through)."""
    try:
        hint = typing.get_type_hints(schema).get(key, Any)
        probe = dataclasses.make_dataclass("Probe", [(key, typing.Optional[hint], dataclasses.field(default=None))])
        structured = OmegaConf.structured(probe)
    except Exception:
        return value
    try:
        merged = OmegaConf.merge(structured, OmegaConf.create({key: value}))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"{where}.{key}: {str(exc).splitlines()[0]}") from None
    except Exception:
        return value
    return OmegaConf.to_container(merged, resolve=True)[key]


def recipe_to_yaml(recipe: Recipe) -> str:
    data = dataclasses.asdict(recipe)
    data.pop("source_file", None)
    return OmegaConf.to_yaml(OmegaConf.create(data))
