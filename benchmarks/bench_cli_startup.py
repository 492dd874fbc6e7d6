"""How long the `adaptune` command takes to start: `python -m adaptune --help` and `python -c "import adaptune"`
against `python -c pass` (the interpreter alone), each a fresh process, interleaved, 7 repeats. Also checks that
neither imports torch, transformers or PEFT and that both print nothing unexpected (the subcommands' modules are
imported only when that subcommand runs; the registries fill at their first read).

    .venv/bin/python benchmarks/bench_cli_startup.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, print_table, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=True)


def main() -> int:
    probe = "import sys, adaptune; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    heavy = _run(["-c", probe]).stdout.strip()
    quiet = _run(["-c", "import adaptune"])
    cases = {
        "python -c pass": lambda: _run(["-c", "pass"]),
        "python -c 'import adaptune'": lambda: _run(["-c", "import adaptune"]),
        "python -m adaptune --help": lambda: _run(["-m", "adaptune", "--help"]),
    }
    rows = compare(cases, baseline="python -c pass", repeats=7)
    print_table("adaptune start-up", rows, "python -c pass")
    print(f"\nheavy modules imported by `import adaptune`: {heavy or 'none'}; "
          f"`import adaptune` printed {len(quiet.stdout) + len(quiet.stderr)} characters")
    help_s = rows["python -m adaptune --help"]["median_s"]
    print(f"`adaptune --help`: {help_s:.3f} s, {rows['python -m adaptune --help']['ratio']:.2f}x `python -c pass`")
    save("bench_cli_startup", {"rows": rows, "heavy_modules": heavy.split(",") if heavy else [],
                               "import_output_chars": len(quiet.stdout) + len(quiet.stderr)})
    return 0 if not heavy and not (quiet.stdout or quiet.stderr) and help_s < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
