"""Write the judge-quality set shipped with adaptune: adaptune/rl/judges/judge_eval_glyphqa.jsonl.

    python tools/make_judge_eval_set.py [--seed 0 --scenes 8 --out PATH]

The rows come from `adaptune.rl.judges.eval_set.glyphqa_judge_rows` (seeded, no images rendered); rerun this after
changing that generator - tests/test_judge_quality.py checks that the shipped file matches it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptune.rl.judges.eval_set import glyphqa_judge_rows
from adaptune.rl.judges.quality import default_set_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--out", type=Path, default=default_set_path())
    args = parser.parse_args()
    rows = glyphqa_judge_rows(seed=args.seed, num_scenes=args.scenes)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
