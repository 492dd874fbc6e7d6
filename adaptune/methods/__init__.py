"""adaptune's adapter methods, one PEFT-style folder each (config, layer, tuner, registration in `__init__`).

Importing this package registers every method with PEFT (`_peft_ext.register_method`), so
`peft.PeftModel.from_pretrained` can load adapters trained with them.
"""

from . import flex_projector, mask_tuning, registers, seg_adapter  # noqa: F401
