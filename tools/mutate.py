"""Mutation testing of the core modules (issue 19): `make mutate`, or `python tools/mutate.py [NAME ...]`.

Each core module is mutated on its own by mutmut (https://github.com/boxed/mutmut) against only the test files that
exercise it, in a scratch copy of the package (runs/mutation/<name>/), so the working tree is never touched and one
module's run stays minutes, not hours. The score per module (killed / all mutants; timeouts count as killed, mutants
that no selected test reaches count as survived) is written to runs/mutation/scores.json and printed as a table; the
surviving mutants of each module are listed in runs/mutation/<name>/survivors.txt (`cd runs/mutation/<name> &&
mutmut show NAME` prints one's diff). After adding tests, `--survivors` reruns only those (with the current tests and
the rest of the package as it is now; refused when the module itself changed): the score then also keeps `before`.
Survivors that cannot be killed (equivalent mutants) are recorded with the reason in tests/mutation/equivalent.md.

    python tools/mutate.py                 # every core module (long: an hour or more on 2 cores)
    python tools/mutate.py rewards grid    # a few
    python tools/mutate.py --list          # the modules and their test files
    python tools/mutate.py --survivors env # after adding tests: rerun only env's survivors (minutes, not tens)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "mutation"

ALSO_COPY = ("rewards", "recipes", "datasets", "docs")
RUNDIR_HARDENING = [f"tests/test_hardening.py::{name}" for name in (
    "test_overwrite_never_deletes_a_folder_that_is_not_a_run",
    "test_overwrite_refuses_the_working_directory_even_when_marked",
    "test_overwrite_empties_a_marked_run_and_keeps_lock", "test_legacy_run_folder_without_marker_is_adopted",
    "test_training_extra_output_dir_is_refused", "test_second_run_on_the_same_directory_is_refused",
    "test_lock_of_another_live_process_refuses_and_of_a_dead_one_is_stale",
    "test_pid_lock_fallback_refuses_a_live_pid_and_takes_over_a_dead_one",
    "test_run_killed_before_its_first_checkpoint_is_not_reused_silently", "test_output_dir_that_is_a_file_is_refused")]

# mutmut adds its copies of a class's methods to the class under public names (`xǁResolutionEnvǁreset__mutmut_1`):
# the test that TRL sees exactly the environment's two public methods cannot pass under mutmut, so it is left out
# of the modules whose classes it inspects (it guards the class's method names, not code that mutmut mutates).
NO_PUBLIC_METHODS_TEST = "--deselect=tests/test_env.py::test_trl_sees_exactly_one_tool_with_the_protocol_schema"

# name -> (module file, the test files that exercise it; arguments starting with "-" go to pytest as they are).
# Keep the test lists short: mutmut runs, per mutant, only the tests (of these files) that reached the mutated function.
CORE: dict[str, tuple[str, list[str]]] = {
    "rewards": ("adaptune/rl/rewards.py", ["tests/test_rewards.py", "tests/test_boundaries.py", *(
        f"tests/test_dropped_groups.py::{name}" for name in (  # not its GRPO run: minutes per mutant
            "test_reward_aborts_when_every_group_is_dropped", "test_guard_threshold_window_and_off_switch"))]),
    "judges.base": ("adaptune/rl/judges/base.py", ["tests/test_judge_base.py", "tests/test_judges.py",
                                                   "tests/test_boundaries.py"]),
    "judges.rule": ("adaptune/rl/judges/rule.py", ["tests/test_judges.py", "tests/test_boundaries.py"]),
    # test_judge_constrained.py: the one-word reply format and parse_choice of the constrained / choice verdicts
    "judges.prompt": ("adaptune/rl/judges/prompt.py", ["tests/test_judges.py", "tests/test_boundaries.py",
                                                       "tests/test_judge_constrained.py"]),
    # the interpreter-exit test times a child interpreter (60 s): on a loaded machine it fails before any mutant
    "judges.init": ("adaptune/rl/judges/__init__.py", [
        "tests/test_judges.py", "tests/test_boundaries.py",
        "--deselect=tests/test_judges.py::test_interpreter_exits_promptly_after_a_trickling_judge"]),
    "env": ("adaptune/rl/env.py", ["tests/test_env_units.py", "tests/test_env.py", "tests/test_boundaries.py",
                                   NO_PUBLIC_METHODS_TEST]),
    "protocol": ("adaptune/budget/protocol.py", ["tests/test_protocol.py", "tests/test_rewards.py",
                                                 "tests/test_env.py", "tests/test_inference.py",
                                                 "tests/test_boundaries.py", NO_PUBLIC_METHODS_TEST]),
    "resolution": ("adaptune/budget/resolution.py", ["tests/test_resolution.py", "tests/test_env.py",
                                                     "tests/test_inference.py", "tests/test_boundaries.py"]),
    "answers": ("adaptune/budget/answers.py", ["tests/test_protocol.py", "tests/test_rewards.py",
                                               "tests/test_env.py", "tests/test_inference.py",
                                               "tests/test_boundaries.py"]),
    "grid": ("adaptune/budget/grid.py", ["tests/test_flex_projector.py", "tests/test_boundaries.py"]),
    # test_hardening.py also trains tiny runs (minutes per mutant): only its run-directory tests (under 0.1 s each)
    "rundir": ("adaptune/train/rundir.py", ["tests/test_boundaries.py", *RUNDIR_HARDENING]),
    "io": ("adaptune/utils/io.py", ["tests/test_boundaries.py", *RUNDIR_HARDENING]),
    # not test_peft_contract.py (PEFT's own load path) nor all of test_hardening.py (tiny training runs)
    "adapters": ("adaptune/adapters.py", ["tests/test_reliability.py", "tests/test_boundaries.py", *(
        f"tests/test_hardening.py::{name}" for name in (
            "test_non_finite_adapter_is_not_saved", "test_nan_weights_are_refused_at_load",
            "test_damaged_bytes_fail_the_checksum", "test_weights_whose_keys_match_nothing_are_refused",
            "test_corrupt_config_variants_name_file_and_field")), *(
        f"tests/test_hub.py::{name}" for name in (
            "test_embedded_default_is_named_not_its_folder",
            "test_save_without_a_source_keeps_a_hub_name_and_drops_a_path")),
        # the refusal of sharded (DTensor) weights and the gathered state_dict that replaces them (a 1-process group)
        "tests/test_scale_out.py::test_an_fsdp2_sharded_adapter_is_gathered_before_it_is_saved"]),
    "mask_tuning.layer": ("adaptune/methods/mask_tuning/layer.py", ["tests/test_method_layers.py",
                                                                   "tests/test_mask_tuning.py",
                                                                   "tests/test_identity.py"]),
    "registers.layer": ("adaptune/methods/registers/layer.py", ["tests/test_method_layers.py",
                                                                 "tests/test_registers.py", "tests/test_identity.py"]),
    "seg_adapter.layer": ("adaptune/methods/seg_adapter/layer.py", ["tests/test_method_layers.py",
                                                                   "tests/test_seg_adapter.py",
                                                                   "tests/test_identity.py"]),
    "flex_projector.layer": ("adaptune/methods/flex_projector/layer.py", ["tests/test_method_layers.py",
                                                                         "tests/test_flex_projector.py",
                                                                         "tests/test_identity.py"]),
    "validate": ("adaptune/data/validate.py", ["tests/test_validate.py", "tests/test_bad_inputs.py",
                                               "tests/test_image_paths.py", "tests/test_boundaries.py"]),
    # not all of test_hardening.py: most of it trains tiny runs (minutes per mutant)
    "config": ("adaptune/config.py", [
        "tests/test_recipe_values.py", "tests/test_recipes.py", *RUNDIR_HARDENING,
        "tests/test_hardening.py::test_training_values_are_checked_before_the_run_folder"]),
    # the two digit sizes are tested in test_image_conditioned.py (not its shipped-policy tests: a model per mutant)
    "glyphqa": ("adaptune/data/glyphqa.py", ["tests/test_glyphqa.py", "tests/test_boundaries.py", *(
        f"tests/test_image_conditioned.py::{name}" for name in (
            "test_off_means_the_rows_of_a_config_without_the_option", "test_both_sizes_with_the_same_question",
            "test_a_large_digit_is_the_small_glyph_at_half_resolution", "test_bad_settings_name_the_field"))]),
}


def _config(module: str, tests: list[str]) -> str:
    test_args = ", ".join(json.dumps(t) for t in tests if t.startswith("-") or (ROOT / t.split("::")[0]).exists())
    return "\n".join([
        "[tool.mutmut]",
        'source_paths = ["adaptune"]',
        f"only_mutate = [{json.dumps(module)}]",
        f"pytest_add_cli_args_test_selection = [{test_args}]",
        # -x: a mutant is killed at its first failing test; no doctests (they are in the default suite, not here)
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-o", "addopts="]',
        f"also_copy = {json.dumps(list(ALSO_COPY))}",
        'process_isolation = "forkserver"',  # torch is not fork-safe after the stats run
        "timeout_multiplier = 5.0",
        "timeout_constant = 10.0",
        "use_git_change_detection = false",
        "",
    ])


def _pytest_section() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r"^\[tool\.pytest\.ini_options\]\n(?:(?!^\[).*\n?)*", text, re.M)
    return match.group(0) if match else ""


def run_one(name: str, mutmut: str, jobs: int) -> dict:
    module, tests = CORE[name]
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "adaptune", work / "adaptune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for extra in ("tests", *ALSO_COPY):  # test data the tests read by path (plugin rewards, recipes)
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, work / extra, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (work / "pyproject.toml").write_text(_pytest_section() + "\n" + _config(module, tests))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    t0 = time.time()
    log = (work / "mutmut.log").open("w")
    subprocess.run([mutmut, "run", "--max-children", str(jobs)], cwd=work, env=env, stdout=log,
                   stderr=subprocess.STDOUT, check=False)
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True, check=False).stdout
    counts: dict[str, int] = {}
    survivors = {}
    for line in results.splitlines():
        if ":" not in line:
            continue
        key, status = (part.strip() for part in line.rsplit(":", 1))
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests"):
            survivors[key] = status
    (work / "survivors.txt").write_text("".join(s + "\n" for s in survivors))
    (work / "survivors.json").write_text(json.dumps(survivors, indent=1))
    (work / "source.py").write_bytes((ROOT / module).read_bytes())  # what the names refer to (for --survivors)
    if not any(counts.get(k) for k in ("killed", "timeout", "survived", "no tests")):
        # e.g. "failed to collect stats": the selected tests fail on the unmutated code (or under mutmut)
        lines = (work / "mutmut.log").read_text(errors="replace").replace("\r", "\n").splitlines()
        error = next((x.strip() for x in reversed(lines) if "fail" in x.lower()), "mutmut produced no results")
        return _score(module, tests, counts, t0, error=f"{error} (see {work / 'mutmut.log'})")
    return _score(module, tests, counts, t0)


def _score(module: str, tests: list[str], counts: dict[str, int], t0: float, **extra: object) -> dict:
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    survived = counts.get("survived", 0) + counts.get("no tests", 0)  # a mutant no test reaches is not killed
    scored = killed + survived
    return {"module": module, "tests": tests, "counts": counts, "killed": killed, "survived": survived,
            "score": round(killed / scored, 4) if scored else None, "seconds": round(time.time() - t0), **extra}


def rerun_survivors(name: str, mutmut: str, jobs: int, previous: dict) -> dict:
    """Run only the last run's survivors again, against the current tests and test list (after adding tests).

    Sound because adding tests never revives a killed mutant; refused when the module's code changed since that
    run (the mutant names would point at other edits): then run the module in full."""
    module, tests = CORE[name]
    work = OUT / name
    if not (work / "survivors.txt").exists() or not (work / "source.py").exists():
        raise SystemExit(f"{name}: no previous run to continue from; run it in full first (without --survivors)")
    if (work / "source.py").read_bytes() != (ROOT / module).read_bytes():
        raise SystemExit(f"{name}: {module} changed since its last run; run it in full (without --survivors)")
    names = (work / "survivors.txt").read_text().split()
    t0 = time.time()
    if not names:
        return dict(previous, seconds=0, full_seconds=previous.get("full_seconds", previous["seconds"]))
    for extra in ("tests", *ALSO_COPY):  # the new tests (mutmut copies them into mutants/ itself)
        shutil.rmtree(work / extra, ignore_errors=True)
        shutil.rmtree(work / "mutants" / extra, ignore_errors=True)
        if (ROOT / extra).is_dir():
            shutil.copytree(ROOT / extra, work / extra, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for source in (ROOT / "adaptune").rglob("*"):  # the rest of the package as it is now (the tests may use it)
        rel = source.relative_to(ROOT)
        if source.is_file() and rel.as_posix() != module and "__pycache__" not in rel.parts:
            for target in (work / rel, work / "mutants" / rel):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    (work / "pyproject.toml").write_text(_pytest_section() + "\n" + _config(module, tests))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    with (work / "mutmut-survivors.log").open("w") as log:
        subprocess.run([mutmut, "run", "--max-children", str(jobs), *names], cwd=work, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=False)
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True, check=False).stdout
    status = {}
    for line in results.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.rsplit(":", 1))
            status[key] = value
    if all(status.get(key, "not checked") == "not checked" for key in names):  # mutmut failed before any mutant
        lines = (work / "mutmut-survivors.log").read_text(errors="replace").replace("\r", "\n").splitlines()
        error = next((x.strip() for x in reversed(lines) if "fail" in x.lower()), "mutmut produced no results")
        return dict(previous, error=f"--survivors: {error} (see {work / 'mutmut-survivors.log'})")
    was = json.loads((work / "survivors.json").read_text()) if (work / "survivors.json").exists() else {}
    counts = dict(previous["counts"])
    left = {}
    for key in names:
        new = status.get(key, "not checked")
        if new in ("killed", "timeout"):  # move it from the survivor status it had to the killed one
            counts[was.get(key, "survived")] -= 1
            counts[new] = counts.get(new, 0) + 1
        else:
            left[key] = was.get(key, "survived") if new == "not checked" else new
    (work / "survivors.txt").write_text("".join(s + "\n" for s in left))
    (work / "survivors.json").write_text(json.dumps(left, indent=1))
    return _score(module, tests, counts, t0, before=previous.get("before", previous["score"]),
                  full_seconds=previous.get("full_seconds", previous["seconds"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"core modules (default: all): {', '.join(CORE)}")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--min-score", type=float, default=0.85)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run in parallel")
    parser.add_argument("--survivors", action="store_true",
                        help="rerun only the survivors of each module's last run, with the current tests (after "
                             "adding tests; the score then also records the previous run's as `before`)")
    args = parser.parse_args(argv)
    if args.list:
        for name, (module, tests) in CORE.items():
            print(f"{name:22s} {module:45s} {' '.join(tests)}")
        return 0
    unknown = [n for n in args.names if n not in CORE]
    if unknown:
        parser.error(f"unknown core module(s) {unknown}; known: {', '.join(CORE)}")
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        print("mutmut is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    scores_path = OUT / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    for name in args.names or list(CORE):
        print(f"mutating {name} ({CORE[name][0]}) ...", flush=True)
        if args.survivors and name in scores:
            scores[name] = rerun_survivors(name, mutmut, args.jobs, scores[name])
        else:
            scores[name] = run_one(name, mutmut, args.jobs)
        # re-read before writing: another module's run may have finished meanwhile (one process per module)
        result = scores[name]
        scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
        scores[name] = result
        scores_path.write_text(json.dumps(scores, indent=1, sort_keys=True))
        s = scores[name]
        if s.get("error"):
            print(f"  FAILED: {s['error']}", flush=True)
        print(f"  {s['killed']} killed, {s['survived']} survived, score {s['score']}, {s['seconds']} s "
              f"(survivors: {OUT / name / 'survivors.txt'})", flush=True)
    # before: the score of the module's last full run, when tests were added after it (--survivors); seconds: that
    # full run's time (a --survivors rerun's own time is in the JSON as `seconds`)
    print(f"\n{'module':22s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'score':>6s} {'before':>6s} "
          f"{'seconds':>7s}")
    low = []
    for name, s in sorted(scores.items()):
        print(f"{name:22s} {s['killed'] + s['survived']:7d} {s['killed']:6d} {s['survived']:8d} "
              f"{s['score'] if s['score'] is not None else '-':>6} {s.get('before', ''):>6} "
              f"{s.get('full_seconds', s['seconds']):7d}")
        if s["score"] is not None and s["score"] < args.min_score:
            low.append(name)
    print(f"\nscores: {scores_path}")
    if low:
        print(f"below {args.min_score:.0%}: {', '.join(low)} (kill the survivors or list them in "
              "tests/mutation/equivalent.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
