"""`kind: grpo` recipes: recipe -> stock TRL `GRPOTrainer` (environment + rewards + adapter) -> run directory.

Why: VisionThink had to fork veRL; TRL 1.16 has every piece (multi-turn `environment_factory`, image tool results,
async reward functions, `log_metric`, PEFT). This module only converts and checks, in one place:
- `grpo.data` -> rows (`adaptune.rl.data`), `grpo.env` -> `ResolutionEnv` factory, `grpo.reward` ->
  `make_visionthink_reward` (or a plugin file), `adapter` -> `peft_config` (LoRA or any adaptune method),
  `training` + `grpo.trainer` -> `GRPOConfig`;
- the traps of ARCHITECTURE.md: every vision special token suppressed while sampling (TRL's `generation_kwargs`
  replace its own one-token list), `max_completion_length` large enough for the returned image (computed, or a clear
  error), `max_tool_calling_iterations=1`, groups whole on each process, CPU without bf16;
- the run directory of the adapter runner (config.yaml, metrics.jsonl, checkpoints/ with COMPLETE markers and
  `resume=true`, adapter/, eval.json, report.md with plots, DONE), plus the held-out comparison against always-low,
  always-full and the oracle.

    adaptune train recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml
    trainer, parts = build_grpo_trainer(load_recipe("recipes/.../visionthink_grpo_tiny.yaml"))   # from Python

Zero-variance groups: TRL 1.16 does not drop them (no DAPO dynamic sampling); their advantages are exactly 0, so they
give no policy gradient; they only dilute the `dapo` token normaliser and still feel the KL term when beta > 0. We log
their share (`frac_reward_zero_std` from TRL, `visionthink/zero_std_groups` from the reward) instead of resampling.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Recipe, RecipeError, recipe_to_yaml, validate_params
from ..models import FamilySpec, LoadedModel
from ..train.rundir import COMPLETE, discard_incomplete_checkpoints, latest_checkpoint, prepare_run_dir
from ..utils.io import append_jsonl, atomic_write_json, atomic_write_text
from .data import DataParams, heldout_rows, load_grpo_rows
from .env import EnvFactory
from ..budget.protocol import tool_call, tool_result_message
from ..budget.two_turn import vision_token_ids

log = logging.getLogger("adaptune")
AUTO = "auto"


@dataclass
class EnvParams:
    """`grpo.env`: the resolution environment and the token budget of one rollout."""

    image_key: str = "image"
    full_image_key: str = "full_image"
    turn_tokens: int = 64
    """Text tokens allowed per assistant turn (think + tool call, think + answer); sizes max_completion_length."""
    suppress_vision_tokens: bool = True


@dataclass
class EvalParams:
    """`grpo.eval`: the held-out comparison written to eval.json and report.md."""

    enabled: bool = True
    dataset: str | None = None
    """'glyphqa' or a dataset folder; default: `grpo.data.dataset`. Set it when training on a labelled folder
    (`label-resolution` output): those rows are training data, and their kind mix is the labels', not the eval mix."""
    num_images: int = 200
    fine_fraction: float = 0.3
    """GlyphQA: share of fine questions in the held-out mix."""
    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["policy", "low", "full", "resize_all", "oracle", "before_rl"])
    """Any of policy (the trained two-turn loop), low / full (always that resolution in the first turn), resize_all
    (the tool path on every question), oracle (resizes exactly on fine questions; needs a `kind` column), before_rl
    (the two-turn loop with the adapter disabled)."""
    max_new_tokens: int | None = None
    """Per turn; default grpo.env.turn_tokens."""
    batch_size: int = 32
    judge: Any = None
    """Judge spec for scoring; default the reward's judge."""


@dataclass
class GRPOSection:
    """The `grpo:` section of a recipe; each part is validated against its own dataclass."""

    data: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    """Arguments of `adaptune.rl.rewards.make_visionthink_reward` (judge, penalty, format_weight, ...), or
    `plugin: rewards/visionthink.py` plus that plugin's keys."""
    eval: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    """Any `trl.GRPOConfig` field (num_generations, temperature, beta, max_completion_length: auto | int, ...)."""
    time_limit_minutes: float | None = None
    """Stop training (with a final checkpoint) once this much wall time has passed; single-process runs only."""


@dataclass
class GRPOPlan:
    data: DataParams
    env: EnvParams
    reward: dict[str, Any]
    eval: EvalParams
    trainer: dict[str, Any]
    time_limit_minutes: float | None = None


TRAINER_DEFAULTS: dict[str, Any] = {
    "num_generations": 8, "temperature": 1.0, "beta": 0.0, "max_completion_length": AUTO, "log_completions": False,
    "scale_rewards": "group", "loss_type": "dapo", "shuffle_dataset": True, "gradient_checkpointing": False,
}


def parse_grpo_section(recipe: Recipe) -> GRPOPlan:
    """Validate `recipe.grpo` (unknown keys -> RecipeError naming `grpo.<part>.<key>` and the file)."""
    where = f"{recipe.source_file}: grpo"
    section = validate_params(dict(recipe.grpo or {}), GRPOSection, where)
    data = validate_params(section.data, DataParams, f"{where}.data")
    env = validate_params(section.env, EnvParams, f"{where}.env")
    evaluation = validate_params(section.eval, EvalParams, f"{where}.eval")
    from .inference import METHODS

    bad = [m for m in evaluation.methods if m not in METHODS]
    if bad:
        raise RecipeError(f"{where}.eval.methods: unknown {bad}; known: {', '.join(METHODS)}")
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    for key in section.trainer:
        if key not in known:
            raise RecipeError(f"{where}.trainer.{key}: not a trl.GRPOConfig field")
    trainer = {**TRAINER_DEFAULTS, **section.trainer}
    iterations = trainer.get("max_tool_calling_iterations", 1)
    if iterations != 1:
        raise RecipeError(f"{where}.trainer.max_tool_calling_iterations={iterations}: the resolution protocol allows "
                          "exactly one tool round (one resize); leave it unset")
    trainer["max_tool_calling_iterations"] = 1
    reward = dict(section.reward)
    _check_reward_keys(reward, f"{where}.reward")
    return GRPOPlan(data, env, reward, evaluation, trainer, section.time_limit_minutes)


def _check_reward_keys(reward: dict[str, Any], where: str) -> None:
    if "plugin" in reward:
        return  # the plugin validates its own keys
    from .rewards import make_visionthink_reward

    known = set(inspect.signature(make_visionthink_reward).parameters)
    for key in reward:
        if key not in known:
            raise RecipeError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


# ------------------------------------------------------------------------------------------------ token budget


def tool_suffix_tokens(processor: Any, image_tokens: int) -> int:
    """Tokens TRL appends for the tool turn that returns one image (as `GRPOTrainer._get_tool_suffix_ids` builds it:
    end of the assistant turn, the tool message with the image and its text, the next assistant header)."""
    tok = processor.tokenizer
    call = tool_call()
    call["function"]["arguments"] = {}
    dummy = [{"role": "user", "content": [{"type": "text", "text": "dummy"}]},
             {"role": "assistant", "content": [{"type": "text", "text": ""}], "tool_calls": [call]}]
    tool = tool_result_message()
    prefix = tok(processor.apply_chat_template(dummy, tokenize=False), add_special_tokens=False)["input_ids"]
    whole = tok(processor.apply_chat_template(dummy + [tool], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
    eos = [i for i, t in enumerate(prefix) if t == tok.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    image_pad = sum(t in vision_token_ids(processor)[:1] for t in whole[len(prefix):])  # one placeholder per image
    return len(whole) - len(prefix) + image_pad * (image_tokens - 1)


def completion_budget(processor: Any, family: FamilySpec, full_sizes: list[tuple[int, int]], turn_tokens: int,
                      ) -> dict[str, int]:
    """The `max_completion_length` a resize rollout needs: two assistant turns plus the tool turn with the image."""
    image_tokens = max(family.visual_tokens(processor, h, w) for (w, h) in full_sizes) if full_sizes else 0
    suffix = tool_suffix_tokens(processor, image_tokens) if image_tokens else 0
    return {"turn_tokens": turn_tokens, "image_tokens": image_tokens, "tool_turn_tokens": suffix,
            "required": 2 * turn_tokens + suffix}


def resolve_completion_length(value: Any, budget: dict[str, int], where: str) -> int:
    if value in (None, AUTO):
        return budget["required"]
    if not isinstance(value, int) or value < budget["required"]:
        raise RecipeError(
            f"{where}.trainer.max_completion_length={value!r} is too small for the resize path: the tool turn that "
            f"returns the full image takes {budget['tool_turn_tokens']} tokens ({budget['image_tokens']} of them image "
            f"tokens), plus 2 x grpo.env.turn_tokens={budget['turn_tokens']} for the two assistant turns = "
            f"{budget['required']}. TRL counts tool-result tokens in this budget and silently drops a tool result that "
            f"does not fit. Use 'auto' or at least {budget['required']}.")
    return value


# ------------------------------------------------------------------------------------------------ config


def grpo_config_kwargs(recipe: Recipe, plan: GRPOPlan, loaded: LoadedModel, output_dir: Path,
                       budget: dict[str, int]) -> dict[str, Any]:
    """GRPOConfig keyword arguments: shared Trainer fields from `training`, then the GRPO section."""
    from ..train.convert import training_arguments_kwargs

    where = f"{recipe.source_file}: grpo"
    kwargs = training_arguments_kwargs(recipe.training, output_dir)
    kwargs.pop("eval_strategy", None)
    trainer = dict(plan.trainer)
    trainer["max_completion_length"] = resolve_completion_length(trainer.get("max_completion_length"), budget, where)
    kwargs.update(trainer)
    if not kwargs.get("use_cpu") and kwargs.get("bf16") is None:
        kwargs["bf16"] = False
    if kwargs.get("use_cpu"):
        kwargs["bf16"] = False  # CPU: fp32 (bf16 autocast on CPU is slow and changes sampling)
    num_generations = kwargs["num_generations"]
    steps = kwargs.get("steps_per_generation") or kwargs.get("gradient_accumulation_steps", 1)
    local = kwargs.get("generation_batch_size") or kwargs["per_device_train_batch_size"] * steps
    if local % num_generations:
        raise RecipeError(
            f"{where}: the per-process generation batch ({local} = training.batch_size x steps_per_generation) must be "
            f"a multiple of grpo.trainer.num_generations={num_generations}, so that every group of rollouts of one "
            f"prompt stays on one process (the group resolution penalty and the advantages are computed per group)")
    if plan.env.suppress_vision_tokens:
        kwargs["generation_kwargs"] = _suppress_kwargs(loaded.processor, dict(kwargs.get("generation_kwargs") or {}),
                                                       bool(kwargs.get("use_vllm")))
    return kwargs


def _suppress_kwargs(processor: Any, generation_kwargs: dict[str, Any], use_vllm: bool) -> dict[str, Any]:
    """Add every vision special token to the suppressed set (transformers) or ban it via logit_bias (vLLM)."""
    ids = vision_token_ids(processor)
    if use_vllm:
        bias = {int(k): float(v) for k, v in (generation_kwargs.get("logit_bias") or {}).items()}
        bias.update({i: -100.0 for i in ids})
        generation_kwargs["logit_bias"] = bias
    else:
        generation_kwargs["suppress_tokens"] = sorted(set(generation_kwargs.get("suppress_tokens") or []) | set(ids))
    return generation_kwargs


def build_reward_funcs(section: dict[str, Any], num_generations: int, where: str = "grpo.reward") -> list[Any]:
    """`make_visionthink_reward(**section)` (num_generations filled in), or the `plugin` file's `build_reward_funcs`."""
    section = dict(section)
    section.setdefault("num_generations", num_generations)
    try:
        if "plugin" in section:
            path = Path(section["plugin"])
            spec = importlib.util.spec_from_file_location(f"adaptune_reward_{path.stem}", path)
            if spec is None or spec.loader is None or not path.exists():
                raise RecipeError(f"{where}.plugin: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return list(module.build_reward_funcs(section))
        from .rewards import make_visionthink_reward

        return [make_visionthink_reward(**section)]
    except (TypeError, ValueError, KeyError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------------ trainer


@dataclass
class GRPOParts:
    """Everything `build_grpo_trainer` assembled (for the run loop, tests and notebooks)."""

    plan: GRPOPlan
    loaded: LoadedModel
    env_factory: EnvFactory
    reward_funcs: list[Any]
    train_rows: Any
    data_stats: dict[str, int]
    budget: dict[str, int]
    config: Any


def build_grpo_trainer(recipe: Recipe, output_dir: Path | None = None, callbacks: list[Any] | None = None):
    """A ready `trl.GRPOTrainer` for a `kind: grpo` recipe and the parts it was built from."""
    from trl import GRPOConfig, GRPOTrainer

    from ..train.convert import to_peft_config
    from ..train.runner import load_for_recipe

    plan = parse_grpo_section(recipe)
    where = f"{recipe.source_file}: grpo"
    loaded = load_for_recipe(recipe)
    if not loaded.family.supports_tools or loaded.family.kind != "vlm":
        raise RecipeError(f"{recipe.source_file}: model family {loaded.family.name!r} has no tool-calling chat "
                          "template; GRPO resolution policies need a family with supports_tools (qwen3_vl, qwen2_5_vl)")
    data_stats: dict[str, int] = {}
    try:
        rows = load_grpo_rows(plan.data, data_stats)
    except (ValueError, FileNotFoundError) as exc:
        raise RecipeError(f"{where}.data: {exc}") from None
    if len(rows) == 0:
        raise RecipeError(f"{where}.data: no usable rows (every row lacked an image or was labelled drop)")
    sizes = [im.size for im in rows.select(range(min(64, len(rows))))[plan.env.full_image_key] if im is not None]
    budget = completion_budget(loaded.processor, loaded.family, sizes, plan.env.turn_tokens)
    output_dir = Path(output_dir or Path("runs") / recipe.name / "checkpoints")
    kwargs = grpo_config_kwargs(recipe, plan, loaded, output_dir, budget)
    try:
        config = GRPOConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{where}.trainer: {exc}") from None
    peft_config = to_peft_config(recipe.adapter, loaded, where=f"{recipe.source_file}: adapter.params")
    if peft_config is None:
        for p in loaded.model.parameters():
            p.requires_grad_(True)
    factory = EnvFactory(loaded.processor, loaded.family, plan.env.image_key, plan.env.full_image_key)
    rewards = build_reward_funcs(plan.reward, config.num_generations, f"{where}.reward")
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=rewards, args=config, train_dataset=rows,
                          processing_class=loaded.processor, peft_config=peft_config, environment_factory=factory,
                          callbacks=callbacks)
    parts = GRPOParts(plan, loaded, factory, rewards, rows, data_stats, budget, config)
    return trainer, parts


def _run_callback_cls():
    from ..train.runner import RunCallback

    class GRPORunCallback(RunCallback):
        """The adapter runner's callback (metrics.jsonl, COMPLETE markers) plus the environment's counters."""

        def __init__(self, run_dir: Path, env_stats: Any) -> None:
            super().__init__(run_dir, task=None, eval_steps=0, eval_limit=None)
            self.env_stats = env_stats

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                logs.update(self.env_stats.snapshot())
            return super().on_log(args, state, control, logs=logs, **kwargs)

    return GRPORunCallback


def _time_limit_callback(minutes: float):
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        """Ends training after `minutes` of wall time (saving a checkpoint), for time-boxed demos."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - self.start > 60 * minutes:
                log.info("time limit of %.1f min reached at step %d", minutes, state.global_step)
                control.should_training_stop = True
                control.should_save = True

    return TimeLimit()


def run_grpo_recipe(recipe: Recipe) -> Path:
    """Run a `kind: grpo` recipe end to end and return its run directory."""
    from accelerate import PartialState

    from ..adapters import save_adapter

    parse_grpo_section(recipe)  # fail on a bad section before touching the run directory
    state = PartialState()
    with state.main_process_first():
        run_dir = prepare_run_dir(recipe) if state.is_main_process else _wait_dir(recipe)
    if state.is_main_process:
        atomic_write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
    from transformers import set_seed

    set_seed(recipe.training.seed)
    t0 = time.time()
    trainer, parts = build_grpo_trainer(recipe, run_dir / "checkpoints")
    trainer.add_callback(_run_callback_cls()(run_dir, parts.env_factory.stats))
    if parts.plan.time_limit_minutes:
        if state.num_processes > 1:
            log.warning("grpo.time_limit_minutes is ignored with %d processes (they could stop at different steps)",
                        state.num_processes)
        else:
            trainer.add_callback(_time_limit_callback(parts.plan.time_limit_minutes))
    resume_from = None
    if recipe.resume:
        if state.is_main_process:
            discard_incomplete_checkpoints(run_dir)
        state.wait_for_everyone()
        resume_from = latest_checkpoint(run_dir)
        log.info("resuming from %s", resume_from)
    t_train = time.time()
    if recipe.training.max_steps > 0:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - t_train
    steps_run = trainer.state.global_step - (int(resume_from.name.split("-")[1]) if resume_from else 0)
    model = trainer.model
    if not trainer.accelerator.is_main_process:
        return run_dir
    model = trainer.accelerator.unwrap_model(model)
    from peft import PeftModel

    if isinstance(model, PeftModel):
        save_adapter(model, run_dir / "adapter")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary: dict[str, Any] = {
        "method": recipe.adapter.method, "family": parts.loaded.family.name, "model": recipe.model.source,
        "trainable_params": n_train, "total_params": sum(p.numel() for p in model.parameters()),
        "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / max(1, steps_run), 3),
        "num_generations": parts.config.num_generations, "max_completion_length": parts.config.max_completion_length,
        **{f"data/{k}": v for k, v in parts.data_stats.items()},
        **{f"env/{k}": v for k, v in parts.env_factory.stats.totals().items()},
    }
    evaluation: dict[str, Any] = {}
    if parts.plan.eval.enabled:
        evaluation = evaluate_policy(model, parts.loaded, parts.plan)
        summary.update(evaluation.get("headline", {}))
    summary["wall_seconds"] = round(time.time() - t0, 1)
    append_jsonl(run_dir / "metrics.jsonl", {"event": "final", "step": trainer.state.global_step,
                                             **evaluation.get("headline", {})})
    atomic_write_json(run_dir / "eval.json", {**summary, "evaluation": evaluation})
    from ..train.report import write_report

    write_report(run_dir, f"Run {recipe.name} (VisionThink GRPO)", summary,
                 report_sections(run_dir, evaluation, parts.budget))
    atomic_write_text(run_dir / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return run_dir


def _wait_dir(recipe: Recipe) -> Path:
    from ..train.rundir import run_dir_for

    run_dir = run_dir_for(recipe)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


# ------------------------------------------------------------------------------------------------ evaluation


def evaluation_rows(plan: GRPOPlan) -> list[dict[str, Any]]:
    """The held-out rows of `grpo.eval` (its own `dataset` when set, else the training data's source)."""
    data = dataclasses.replace(plan.data, dataset=plan.eval.dataset) if plan.eval.dataset else plan.data
    return heldout_rows(data, plan.eval.num_images, plan.eval.fine_fraction, plan.eval.split)


def evaluate_policy(model: Any, loaded: LoadedModel, plan: GRPOPlan) -> dict[str, Any]:
    """`compare_methods` on the held-out rows, plus the headline numbers and the VisionThink targets."""
    from .inference import compare_methods

    judge = plan.eval.judge if plan.eval.judge is not None else plan.reward.get("judge")
    t0 = time.time()
    rows = evaluation_rows(plan)
    result = compare_methods(model, loaded.processor, rows, plan.eval.methods, judge, loaded.family,
                             plan.data.downsample, plan.eval.max_new_tokens or plan.env.turn_tokens,
                             plan.eval.batch_size)
    result["seconds"] = round(time.time() - t0, 1)
    methods = result["methods"]
    headline: dict[str, Any] = {}
    for name, cells in methods.items():
        headline[f"eval/{name}/accuracy"] = cells["all"]["accuracy"]
        headline[f"eval/{name}/visual_tokens"] = cells["all"]["visual_tokens"]
    if "policy" in methods and "full" in methods:
        pol, full = methods["policy"], methods["full"]
        acc_ratio = pol["all"]["accuracy"] / full["all"]["accuracy"] if full["all"]["accuracy"] else float("nan")
        tok_ratio = pol["all"]["visual_tokens"] / full["all"]["visual_tokens"]
        fine, coarse = pol.get("fine", {}).get("resize_rate"), pol.get("coarse", {}).get("resize_rate")
        resize_ratio = (fine / coarse if coarse else float("inf") if fine else float("nan")) if fine is not None \
            and coarse is not None else float("nan")
        headline.update({
            "eval/accuracy_vs_full": acc_ratio, "eval/tokens_vs_full": tok_ratio,
            "eval/resize_rate_fine_over_coarse": resize_ratio,
            "target/accuracy>=95%_of_full": bool(acc_ratio >= 0.95),
            "target/tokens<=60%_of_full": bool(tok_ratio <= 0.60),
            "target/resize_fine>=3x_coarse": bool(resize_ratio >= 3.0),
        })
    if "policy" in methods and "resize_all" in methods and methods["resize_all"]["all"]["accuracy"]:
        headline["eval/accuracy_vs_resize_all"] = (methods["policy"]["all"]["accuracy"]
                                                   / methods["resize_all"]["all"]["accuracy"])
    result["headline"] = headline
    return result


def _rl_curves(run_dir: Path) -> Path | None:
    """One figure with reward, resize rate and visual tokens per rollout over training steps."""
    from ..utils.io import read_jsonl

    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "train" and "reward" in r]
    if len(records) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", ["reward", "visionthink/accuracy", "visionthink/format"]),
              ("resize rate", ["visionthink/resize_rate", "visionthink/resize_rate_fine",
                               "visionthink/resize_rate_coarse"]),
              ("visual tokens per rollout", ["visionthink/visual_tokens"])]
    fallback = {"visionthink/resize_rate": "env/resize_rate", "visionthink/visual_tokens": "env/visual_tokens"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            key = key if any(key in r for r in records) else fallback.get(key, key)
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 20 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "plots" / "rl_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_sections(run_dir: Path, evaluation: dict[str, Any], budget: dict[str, int]) -> list[str]:
    """Markdown: the comparison table (overall and per kind), the targets, RL curves, the token budget."""
    from ..train.report import markdown_table

    sections = []
    methods = evaluation.get("methods", {})
    if methods:
        full_tokens = methods.get("full", {}).get("all", {}).get("visual_tokens")
        full_acc = methods.get("full", {}).get("all", {}).get("accuracy")
        rows = []
        for name, cells in methods.items():
            a = cells["all"]
            row = {"method": name, "accuracy": a["accuracy"], "visual tokens": a["visual_tokens"],
                   "resize rate": a["resize_rate"]}
            if full_tokens:
                row["tokens vs full"] = a["visual_tokens"] / full_tokens
            if full_acc:
                row["accuracy vs full"] = a["accuracy"] / full_acc
            for kind in ("coarse", "fine"):
                if kind in cells:
                    row[f"{kind} acc"] = cells[kind]["accuracy"]
                    row[f"{kind} resize"] = cells[kind]["resize_rate"]
            rows.append(row)
        sections.append(f"## Held-out comparison ({evaluation.get('n')} questions)\n")
        sections.append("policy = the trained two-turn loop; low / full = always that resolution in the first turn "
                        "(direct answer); resize_all = the tool path on every question (low + full image); oracle = "
                        "resizes exactly on fine questions; before_rl = the two-turn loop without the adapter. Only "
                        "policy uses the trained adapter: every other row is the base model.\n")
        sections.append(markdown_table(rows))
        targets = {k: v for k, v in evaluation.get("headline", {}).items() if k.startswith("target/")}
        if targets:
            sections.append("## VisionThink targets\n")
            sections.append(markdown_table([{"target": k.split("/", 1)[1], "met": v} for k, v in targets.items()]))
    curves = _rl_curves(run_dir)
    if curves is not None:
        sections.append("## Reward, resize rate and visual tokens during GRPO\n")
        sections.append(f"![rl curves](plots/{curves.name})\n")
    sections.append("## Rollout token budget\n")
    sections.append(markdown_table([{"part": k, "tokens": v} for k, v in budget.items()]))
    return sections


__all__ = ["AUTO", "COMPLETE", "EnvParams", "EvalParams", "GRPOParts", "GRPOPlan", "GRPOSection", "build_grpo_trainer",
           "build_reward_funcs", "completion_budget", "grpo_config_kwargs", "parse_grpo_section",
           "evaluate_policy", "evaluation_rows", "report_sections", "resolve_completion_length", "run_grpo_recipe",
           "tool_suffix_tokens"]
