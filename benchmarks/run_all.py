"""`make bench`: run every benchmarks/bench_*.py in turn (each in its own process) and summarise.

Each benchmark prints its table and writes benchmarks/results/<name>.json; this runner only sequences them, gives
each a time budget, and reports which ran. Under 15 minutes on 2 CPU cores in total.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGET_S = 240


def main() -> int:
    failures = []
    t_all = time.time()
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n===== {script.name} =====", flush=True)
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, str(script)], timeout=BUDGET_S)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
            print(f"{script.name}: over its {BUDGET_S} s budget")
        print(f"----- {script.name}: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f} s", flush=True)
        if not ok:
            failures.append(script.name)
    print(f"\nall benchmarks: {time.time() - t_all:.0f} s; failed: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
