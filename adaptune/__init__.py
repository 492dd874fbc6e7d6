"""adaptune: token-budget-aware adaptation of vision-language models.

`import adaptune` registers everything the library ships: the adapter methods with PEFT (so
`peft.PeftModel.from_pretrained` can load adapters trained here), tasks, rewards and judges, the model sources
"default" and "pretrained:*", and the recipe kinds "adapter" and "grpo". Every `import adaptune.<module>` runs this
file first, so the registries are always full. See README.md for the two commands that run the demo and the tests,
and docs/architecture.md for the layers.
"""

from .version import __version__  # noqa: F401

from . import default, methods, models, pretrain, tasks, train  # noqa: E402,F401  (sources, methods, tasks, "adapter")
from .rl import rewards as _rewards  # noqa: E402,F401  (registers rewards and judges)
from .rl import run as _rl_run  # noqa: E402,F401  (registers the recipe kind "grpo")
from .registry import FAMILIES, JUDGES, METHODS, REWARDS, RUN_KINDS, SOURCES, TASKS  # noqa: E402,F401
