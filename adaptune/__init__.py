"""adaptune: token-budget-aware adaptation of vision-language models.

`import adaptune` registers the adapter methods with PEFT, so `peft.PeftModel.from_pretrained` can load adapters
trained here. See README.md for the two commands that run the demo and the tests.
"""

__version__ = "0.1.0"

from . import methods, models, tasks  # noqa: E402,F401
from .rl import rewards as _rewards  # noqa: E402,F401  (registers rewards and judges)
from .registry import FAMILIES, JUDGES, METHODS, REWARDS, TASKS  # noqa: E402,F401
