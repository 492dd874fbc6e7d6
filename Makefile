# make demo       build the environment (once) and run the quickstart on the embedded default
# make test       the fast test suite (minutes on 2 CPU cores)
# make test-slow  end-to-end checks (shortened builds, GRPO runs, servers, the notebook)
# make bench      benchmarks that print ratios measured side by side
# make mutate     mutation testing of the core modules (mutmut; long), a score per module in runs/mutation/scores.json
#                 (one module: make mutate MODULES=rewards; the list: python tools/mutate.py --list)
# make demo-rl    VisionThink on the default: label the RL questions, GRPO (14 min cap), held-out report
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: env demo demo-rl test test-slow bench mutate clean
env:
	@bash tools/bootstrap.sh

demo: env
	$(PY) -m adaptune demo

# Labelling (4 rollouts per question and resolution) keeps the questions where resolution decides the reward
# (docs/methods.md#visionthink); the GRPO recipe then trains on them. 1000 rl-split rows, 30% fine, at T=0.3: 531
# low-res-suffices and 313 needs-high-res rows (156 dropped). One torch thread: fastest on a shared 2-core box.
demo-rl: env
	OMP_NUM_THREADS=1 $(PY) -m adaptune label-resolution default --n 4 --num 1000 --split rl --fine-fraction 0.3 \
		--temperature 0.3 --out runs/visionthink-labels
	OMP_NUM_THREADS=1 $(PY) -m adaptune train recipes/qwen3_vl/glyphqa/visionthink_grpo.yaml \
		grpo.data.dataset=runs/visionthink-labels output.overwrite=true

test: env
	$(PY) -m pytest -q

test-slow: env
	$(PY) -m pytest -q -m slow

bench: env
	$(PY) benchmarks/run_all.py

mutate: env
	$(PY) tools/mutate.py $(MODULES)

clean:
	rm -rf runs .pytest_cache
