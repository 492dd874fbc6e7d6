"""Recipe validation (`adaptune.config`) value by value: every default, every training limit exactly at its bound,
the renamed keys in files and overrides, the override rule of the command line, component params and the exact
messages (they name the file and the key). Written against `make mutate MODULES=config` (issue 19);
tests/test_recipes.py covers the shipped recipes and the components.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from adaptune.config import (
    RENAMED_TRAINING_KEYS,
    RESERVED_TRAINING_EXTRA,
    Recipe,
    RecipeError,
    check_recipe_values,
    is_override,
    load_recipe,
    recipe_to_yaml,
    split_overrides,
    validate_params,
)

MINIMAL = {"name": "r", "task": {"name": "vqa_sft"}}


def recipe(**training) -> Recipe:
    r = load_recipe(data=MINIMAL)
    for key, value in training.items():
        setattr(r.training, key, value)
    return r


def test_defaults():
    r = load_recipe(data=MINIMAL)
    data = dataclasses.asdict(r)
    assert data == {
        "name": "r", "description": "", "kind": "adapter",
        "model": {"source": "default", "family": None, "quantization": None, "dtype": None,
                  "trust_remote_code": False, "seed": 0, "chat_template": None},
        "task": {"name": "vqa_sft", "params": {}},
        "adapter": {"method": "lora", "params": {}},
        "budget": {"reducer": None, "tokens": None},
        "training": {"max_steps": 100, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                     "learning_rate": 1e-3, "weight_decay": 0.0, "lr_scheduler_type": "cosine", "warmup_steps": 0.0,
                     "max_grad_norm": 1.0, "logging_steps": 5, "save_steps": 50, "save_total_limit": 2,
                     "eval_steps": 0, "eval_limit": 200, "seed": 0, "bf16": False, "report_to": "none", "extra": {}},
        "output": {"dir": None, "overwrite": False},
        "grpo": {}, "resume": False, "source_file": "<recipe>",
    }
    with pytest.raises(RecipeError, match=r"^<recipe>: "):  # name and task.name are required
        load_recipe()


def test_renamed_training_keys_in_files_and_overrides(tmp_path):
    assert RENAMED_TRAINING_KEYS == {"batch_size": "per_device_train_batch_size",
                                     "grad_accum": "gradient_accumulation_steps",
                                     "lr_scheduler": "lr_scheduler_type", "warmup": "warmup_steps"}
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntask: {name: vqa_sft}\ntraining: {max_steps: 3, grad_accum: 2}\n")
    with pytest.raises(RecipeError, match=rf"^{path}: training.grad_accum: renamed to "
                                          r"training.gradient_accumulation_steps \(the transformers.TrainingArguments "
                                          r"name\)$"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"^<recipe> \(override 'training.warmup=3'\): training.warmup: renamed to "
                                          r"training.warmup_steps"):
        load_recipe(data=MINIMAL, overrides=["training.warmup=3"])
    with pytest.raises(RecipeError, match=r"override ' training.batch_size=3'\): training.batch_size: renamed"):
        load_recipe(data=MINIMAL, overrides=[" training.batch_size=3"])
    assert load_recipe(data=MINIMAL, overrides=["training.warmup_steps=3"]).training.warmup_steps == 3


def test_files_overrides_and_interpolation(tmp_path):
    with pytest.raises(RecipeError, match=r"^recipe file .*nope.yaml does not exist$"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: not valid YAML: "):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match=r"list.yaml: a recipe must be a mapping at the top level$"):
        load_recipe(tmp_path / "list.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("name: r\ndescription: ${name}-x\ntask: {name: vqa_sft}\n")
    r = load_recipe(good, ["training.max_steps=7", "model.seed=3"])
    assert (r.description, r.training.max_steps, r.model.seed, r.source_file) == ("r-x", 7, 3, str(good))
    with pytest.raises(RecipeError, match=r"^override 'training.max_steps' is not key=value$"):
        load_recipe(data=MINIMAL, overrides=["training.max_steps"])
    with pytest.raises(RecipeError, match=r"^<recipe> \(override 'training.max_steps=x'\): key "
                                          r"'training.max_steps': "):
        load_recipe(data=MINIMAL, overrides=["training.max_steps=x"])
    with pytest.raises(RecipeError, match=r"^<recipe>: key 'training.nope': "):
        load_recipe(data={**MINIMAL, "training": {"nope": 1}})
    with pytest.raises(RecipeError, match=r"^<recipe>: key 'description': Interpolation key 'missing' not found$"):
        load_recipe(data={**MINIMAL, "description": "${missing}"})  # one line: OmegaConf's details dropped
    with pytest.raises(RecipeError, match=r"^<recipe>: Merge error: str is not a subclass of TaskSection"):
        load_recipe(data={"name": "r", "task": "x"})  # an error without a key: no "key ...:" part
    with pytest.raises(RecipeError, match=r"^<recipe> \(override 'training.grad_accum=a=b'\): training.grad_accum: "
                                          r"renamed"):
        load_recipe(data=MINIMAL, overrides=["training.grad_accum=a=b"])  # the key ends at the first "="
    with pytest.raises(RecipeError, match=r"^<recipe>: training.max_steps: must be an integer >= 0"):
        load_recipe(data={**MINIMAL, "training": {"max_steps": -1}})  # the values are checked on load


@pytest.mark.parametrize(("arg", "expected"), [
    ("training.max_steps=10", True), ("a=1", True), ("_x=1", True), ("a-b.c_d=1", True), ("a=", True),
    ("=1", False), ("1a=1", False), ("-a=1", False), ("runs/lr=1e-3", False), ("a b=1", False), ("plain", False),
    ("a=b=c", True),
])
def test_is_override(arg, expected):
    assert is_override(arg) is expected


def test_existing_paths_are_not_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=1e-3.yaml").write_text("x")
    assert not is_override("lr=1e-3.yaml") and is_override("lr=1e-4.yaml")
    assert split_overrides(["r.yaml", "a=1", "lr=1e-3.yaml", "b=2"]) == (["r.yaml", "lr=1e-3.yaml"], ["a=1", "b=2"])


INT_LIMITS = [("max_steps", 0), ("per_device_train_batch_size", 1), ("gradient_accumulation_steps", 1),
              ("logging_steps", 1), ("save_steps", 1), ("save_total_limit", 1), ("eval_steps", 0), ("seed", 0)]


@pytest.mark.parametrize(("key", "low"), INT_LIMITS)
def test_integer_limits_are_inclusive(key, low):
    check_recipe_values(recipe(**{key: low}))
    hint = " (0: evaluate only)" if key == "max_steps" else ""
    for bad in (low - 1, float(low + 1), True):
        with pytest.raises(RecipeError, match=rf"^<recipe>: training.{key}: must be an integer >= {low}"
                                              rf"{hint.replace('(', '[(]').replace(')', '[)]')}, got "):
            check_recipe_values(recipe(**{key: bad}))


def test_float_limits():
    check_recipe_values(recipe(eval_limit=None))
    check_recipe_values(recipe(eval_limit=1))
    for bad in (0, True, 2.0):
        with pytest.raises(RecipeError, match=r"training.eval_limit: must be null or an integer >= 1, got "):
            check_recipe_values(recipe(eval_limit=bad))
    check_recipe_values(recipe(learning_rate=1e-12))
    check_recipe_values(recipe(learning_rate=3))  # an int is a number
    for bad in (0.0, -1e-3, float("inf"), float("nan"), True, "1e-3"):
        with pytest.raises(RecipeError, match=r"training.learning_rate: must be a finite number > 0, got "):
            check_recipe_values(recipe(learning_rate=bad))
    for key in ("weight_decay", "warmup_steps", "max_grad_norm"):
        check_recipe_values(recipe(**{key: 0.0}))
        check_recipe_values(recipe(**{key: 0}))
        for bad in (-1e-9, float("inf"), float("nan"), False):
            with pytest.raises(RecipeError, match=rf"^<recipe>: training.{key}: must be a finite number >= 0, got "):
                check_recipe_values(recipe(**{key: bad}))


def test_extra_report_to_output_and_scheduler():
    with pytest.raises(RecipeError, match=r"^<recipe>: training.extra must be a mapping$"):
        check_recipe_values(recipe(extra=["x"]))
    for key, why in RESERVED_TRAINING_EXTRA.items():
        with pytest.raises(RecipeError, match=rf"^<recipe>: training.extra.{key}: not allowed \({why}\)$"):
            check_recipe_values(recipe(extra={key: 1}))
    with pytest.raises(RecipeError, match=r"^<recipe>: training.extra.max_steps: a training field; set "
                                          r"training.max_steps instead$"):
        check_recipe_values(recipe(extra={"max_steps": 3}))
    check_recipe_values(recipe(extra={"optim": "adamw_torch"}))
    check_recipe_values(recipe(report_to="tensorboard"))
    check_recipe_values(recipe(report_to=["tensorboard", "wandb"]))
    for bad in ("", [], [""], ["ok", 3], 5, None):
        with pytest.raises(RecipeError, match=r"training.report_to: must be \"none\", an integration name or a list"):
            check_recipe_values(recipe(report_to=bad))
    r = recipe()
    r.output.dir = "  "
    with pytest.raises(RecipeError, match=r"^<recipe>: output.dir: empty \(leave it unset for runs/<name>\)$"):
        check_recipe_values(r)
    r.output.dir = "runs/x"
    check_recipe_values(r)
    with pytest.raises(RecipeError, match=r"^<recipe>: training.lr_scheduler_type: unknown scheduler 'cosin' "
                                          r"\(known: linear, cosine, "):
        check_recipe_values(recipe(lr_scheduler_type="cosin"))
    check_recipe_values(recipe(lr_scheduler_type="constant"))
    check_recipe_values(recipe(extra={"extra": 1}))  # not a training field: left to the TrainingArguments check
    r = recipe(max_steps=-1)
    r.source_file = None  # a recipe built in code
    with pytest.raises(RecipeError, match=r"^<recipe>: training.max_steps: "):
        check_recipe_values(r)
    r.source_file = "f.yaml"
    with pytest.raises(RecipeError, match=r"^f.yaml: training.max_steps: .*, got -1$"):
        check_recipe_values(r)


@dataclass
class Params:
    n: int = 1
    name: str = "a"
    ratio: float = 0.5
    anything: object = None
    hidden: int = field(default=0, init=False)

    def __post_init__(self):
        if self.n > 100:
            raise ValueError("n too large")


def test_validate_params():
    assert validate_params({}, Params, "task.params") == Params()
    assert validate_params({"n": "5", "ratio": 1}, Params, "task.params") == Params(n=5, ratio=1.0)
    assert validate_params({"anything": {"x": [1]}}, Params, "p").anything == {"x": [1]}
    with pytest.raises(RecipeError, match=r"^task.params.hidden: unknown key \(known: anything, n, name, ratio\)$"):
        validate_params({"zz": 1, "hidden": 2}, Params, "task.params")
    with pytest.raises(RecipeError, match=r"^task.params.n: Value 'x' of type 'str' could not be converted"):
        validate_params({"n": "x"}, Params, "task.params")
    with pytest.raises(RecipeError, match=r"^task.params: n too large$"):
        validate_params({"n": 101}, Params, "task.params")
    with pytest.raises(TypeError, match="is not a dataclass"):
        validate_params({}, dict, "x")


def test_recipe_to_yaml_round_trips_without_the_source_file():
    r = load_recipe(data=MINIMAL, overrides=["training.max_steps=9"])
    text = recipe_to_yaml(r)
    assert "source_file" not in text and "max_steps: 9" in text
    import yaml

    again = load_recipe(data=yaml.safe_load(text))
    assert dataclasses.asdict(again) == dataclasses.asdict(r)
