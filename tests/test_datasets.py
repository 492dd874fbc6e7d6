"""The dataset layer (`adaptune.data.sources`): the user's own data in every form, VisionThink's schema, the
bad-input messages, and GRPO rows that stay Arrow-backed instead of a list of decoded images.

The VisionThink fixture is built locally in that project's exact training-set schema (`images` list, `problem`,
`solution`, `original_answer`, `reformat_answers`, `info` {tgt_width, tgt_height, use_tool}, `doc_id`) and written as
parquet shards; vqa_sft and GRPO train on it and `adaptune eval` evaluates on it.
"""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image

from adaptune.config import RecipeError, load_recipe
from adaptune.data.sources import DatasetSpecError, fit_pixels, load_source
from adaptune.data.validate import InputError
from adaptune.rl.data import DataParams, heldout_rows, load_grpo_rows

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
VISIONTHINK = datasets.Features({
    "images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
    "solution": datasets.Value("string"), "original_answer": datasets.Value("string"),
    "reformat_answers": datasets.List(datasets.Value("string")),
    "info": {"tgt_width": datasets.Value("int64"), "tgt_height": datasets.Value("int64"),
             "use_tool": datasets.Value("bool")},
    "doc_id": datasets.Value("int64")})


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def visionthink_rows(n: int, offset: int = 0, size: tuple[int, int] = (64, 64)) -> datasets.Dataset:
    names = [list(COLOURS)[(i + offset) % 3] for i in range(n)]
    return datasets.Dataset.from_dict({
        "images": [[{"bytes": png(COLOURS[c], size), "path": None}] for c in names],
        "problem": ["What colour is the image?"] * n,
        "solution": [f"<think>look</think><answer>{c}</answer>" for c in names],
        "original_answer": names, "reformat_answers": [[c, c.upper()] for c in names],
        "info": [{"tgt_width": 32, "tgt_height": 32, "use_tool": i % 2 == 0} for i in range(n)],
        "doc_id": [1000 + offset + i for i in range(n)]}, features=VISIONTHINK)


@pytest.fixture(scope="module")
def visionthink_dir(tmp_path_factory):
    """A folder of parquet shards in VisionThink's schema: data/train-*.parquet (24 rows), data/test-*.parquet (6)."""
    root = tmp_path_factory.mktemp("visionthink")
    (root / "data").mkdir()
    visionthink_rows(24).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    visionthink_rows(6, offset=1).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


# ------------------------------------------------------------------------------------------------ resolving
def test_visionthink_schema_maps_every_column(visionthink_dir):
    rows = load_source({"path": str(visionthink_dir / "data" / "train-*.parquet"), "schema": "visionthink"},
                       "train", 4, key="grpo.data.dataset")
    assert isinstance(rows, datasets.Dataset) and len(rows) == 4
    assert set(rows.column_names) == {"image", "question", "answer", "kind", "id", "target_width", "target_height"}
    first = rows[0]
    assert first["question"] == "What colour is the image?" and first["answer"] == "red"  # original_answer
    assert first["id"] == "1000" and (first["target_width"], first["target_height"]) == (32, 32)
    assert [r["kind"] for r in rows] == ["fine", "coarse", "fine", "coarse"]  # info.use_tool
    assert first["image"].size == (64, 64) and first["image"].getpixel((5, 5)) == COLOURS["red"]
    # a folder of shards: splits by file name; the test split is its own rows
    test = load_source({"path": str(visionthink_dir), "schema": "visionthink"}, "test", None, key="k")
    assert len(test) == 6 and test[0]["answer"] == "green"


def test_column_map_overrides_the_schema(visionthink_dir):
    rows = load_source({"path": str(visionthink_dir), "schema": "visionthink", "split": "test",
                        "columns": {"answer": "solution", "kind": "info.use_tool"}}, "train", 2, key="k")
    assert rows[0]["answer"] == "<think>look</think><answer>green</answer>" and rows[0]["kind"] == "fine"


def test_jsonl_with_relative_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    records = []
    for i, name in enumerate(COLOURS):
        Image.new("RGB", (40, 30), COLOURS[name]).save(tmp_path / "imgs" / f"{i}.png")
        records.append({"picture": f"imgs/{i}.png", "q": "Which colour?", "a": name, "hard": i == 1})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = {"path": str(tmp_path / "rows.jsonl"),
            "columns": {"image": "picture", "question": "q", "answer": "a", "kind": "hard"}}
    rows = load_source(spec, "train", None, key="task.params.dataset")
    assert [r["answer"] for r in rows] == list(COLOURS) and [r["kind"] for r in rows] == ["coarse", "fine", "coarse"]
    assert rows[2]["image"].size == (40, 30) and rows[2]["image"].getpixel((1, 1)) == COLOURS["blue"]


def test_save_to_disk_folder_keeps_working(vqa_dataset_dir):
    rows = load_source(str(vqa_dataset_dir), "validation", 5, key="task.params.dataset")
    assert len(rows) == 5 and set(rows.column_names) == {"image", "question", "answer", "kind"}


def test_pixel_range_scales_into_range():
    assert fit_pixels(Image.new("RGB", (400, 100)), max_pixels=10_000).size == (200, 50)
    assert fit_pixels(Image.new("RGB", (10, 40)), min_pixels=1_600).size == (20, 80)
    same = Image.new("RGB", (50, 50))
    assert fit_pixels(same, 100, 10_000) is same


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_key_and_the_column(visionthink_dir, tmp_path):
    shards = str(visionthink_dir / "data" / "train-*.parquet")
    with pytest.raises(DatasetSpecError, match=r"grpo\.data\.dataset\.columns\.answer: column 'reference' is not "
                                               r"in the dataset \(columns: images, problem"):
        load_source({"path": shards, "columns": {"answer": "reference"}}, "train", 2, key="grpo.data.dataset")
    with pytest.raises(DatasetSpecError, match=r"task\.params\.dataset: no image column \(looked for image; .*map "
                                               r"one with task\.params\.dataset\.columns\.image"):
        load_source(shards, "train", 2, key="task.params.dataset")
    with pytest.raises(DatasetSpecError, match=r"k: '.*/no-such-folder' does not exist"):
        load_source(str(tmp_path / "no-such-folder"), "train", 2, key="k")
    with pytest.raises(DatasetSpecError, match=r"k: no file matches"):
        load_source(str(tmp_path / "missing-*.parquet"), "train", 2, key="k")
    with pytest.raises(DatasetSpecError, match=r"k: .* has no split 'rl' \(has train, test\); set k\.split"):
        load_source({"path": str(visionthink_dir), "schema": "visionthink"}, "rl", 2, key="k")
    with pytest.raises(RecipeError, match=r"task\.params\.dataset: schema: unknown 'llava'"):
        load_source({"path": shards, "schema": "llava"}, "train", 2, key="task.params.dataset")
    with pytest.raises(RecipeError, match=r"columns\.picture: unknown role"):
        load_source({"path": shards, "columns": {"picture": "images"}}, "train", 2, key="k")


def test_unreachable_hub_id_is_one_message_naming_key_and_id(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetSpecError) as err:
        load_source("someone/no-such-dataset-here", "train", 2, key="grpo.data.dataset")
    message = str(err.value)
    assert message.startswith("grpo.data.dataset: cannot load hub dataset 'someone/no-such-dataset-here'")
    assert "\n" not in message and "set grpo.data.dataset to DIR" in message


def test_a_recipe_refuses_a_bad_spec_before_any_work():
    from adaptune.rl.sections import parse_grpo_section

    tiny = "recipes/qwen3_vl/glyphqa/visionthink_grpo_tiny.yaml"
    with pytest.raises(RecipeError, match=r"grpo\.data.*schema: unknown 'nope'"):
        parse_grpo_section(load_recipe(tiny, ["grpo.data.dataset={path: x.parquet, schema: nope}"]))
    with pytest.raises(RecipeError, match=r"grpo\.data.*min_pixels \(500\) is above max_pixels \(100\)"):
        parse_grpo_section(load_recipe(tiny, ["grpo.data.min_pixels=500", "grpo.data.max_pixels=100"]))
    with pytest.raises(RecipeError, match=r"grpo\.eval\.dataset.*columns\.img: unknown role"):
        parse_grpo_section(load_recipe(tiny, ["grpo.eval.dataset={path: x.parquet, columns: {img: a}}"]))


def test_an_undecodable_image_names_its_row(tmp_path):
    from adaptune.tasks.vqa import load_vqa_rows

    ds = visionthink_rows(3)
    cells = ds["images"]
    bad = datasets.Dataset.from_dict({**ds.to_dict(), "images": [cells[0], [{"bytes": b"\x89PNG\r\n not a png",
                                                                             "path": None}], cells[2]]},
                                     features=VISIONTHINK)
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    spec = {"path": str(tmp_path / "bad.parquet"), "schema": "visionthink"}
    with pytest.raises(InputError, match="row 1001: unreadable or corrupt image"):
        load_vqa_rows(spec, "train", 10, 0)
    with pytest.raises(InputError, match="row 1001: unreadable or corrupt image"):
        load_grpo_rows(DataParams(dataset=spec))


# ------------------------------------------------------------------------------------------------ GRPO rows
def test_grpo_rows_are_arrow_backed_with_encoded_images(visionthink_dir):
    """Structural memory check: the GRPO dataset is a `datasets.Dataset` whose Arrow table holds the images encoded
    (PNG bytes), decoded only when a row is read; not a Python list of decoded images."""
    spec = {"path": str(visionthink_dir), "schema": "visionthink"}
    rows = load_grpo_rows(DataParams(dataset=spec, num_samples=8))
    assert isinstance(rows, datasets.Dataset) and len(rows) == 8
    assert isinstance(rows.features["image"], datasets.Image) and isinstance(rows.features["full_image"],
                                                                             datasets.Image)
    cell = rows.with_format("arrow")[:1]["full_image"][0].as_py()
    assert isinstance(cell["bytes"], bytes) and cell["bytes"].startswith(b"\x89PNG")
    assert rows.cache_files, "built from files on disk, the rows are memory-mapped from a cache file"
    first = rows[0]
    assert first["image"].size == (32, 32) and first["full_image"].size == (64, 64)  # info.tgt_* = first view
    assert first["kind"] == "fine" and first["answer"] == "red" and first["id"] == "1000"


def test_pixel_range_applies_to_grpo_and_heldout_rows(tmp_path):
    visionthink_rows(4, size=(128, 128)).remove_columns("info").to_parquet(str(tmp_path / "big.parquet"))
    spec = {"path": str(tmp_path / "big.parquet"), "schema": "visionthink"}
    params = DataParams(dataset=spec, max_pixels=64 * 64)
    rows = load_grpo_rows(params)
    assert rows[0]["full_image"].size == (64, 64) and rows[0]["image"].size == (32, 32)
    held = heldout_rows(params, num_images=2, split="train")
    assert [r["image"].size for r in held] == [(64, 64)] * 2 and "kind" not in held[0]


# ------------------------------------------------------------------------------------------------ training on it
def test_vqa_sft_trains_and_evaluates_on_a_visionthink_parquet(visionthink_dir, tmp_path):
    from adaptune.train import run_recipe

    recipe = load_recipe(data={
        "name": "vt-sft", "model": {"source": "tiny:qwen3_vl"},
        "task": {"name": "vqa_sft", "params": {
            "dataset": {"path": str(visionthink_dir), "schema": "visionthink"}, "num_train": 24, "num_eval": 6,
            "answer_format": "plain", "max_new_tokens": 4, "max_pixels": 32 * 32}},
        "adapter": {"method": "lora", "params": {"r": 4}},
        "training": {"max_steps": 2, "learning_rate": 5e-3, "save_steps": 2, "logging_steps": 1, "eval_limit": 6},
        "output": {"dir": str(tmp_path / "run")}})
    run_dir = run_recipe(recipe)
    summary = json.loads((run_dir / "eval.json").read_text())
    # 64 px images cost the tiny Qwen3-VL 4 visual tokens; max_pixels 32*32 scales them to 32 px: 1 token
    assert summary["eval/visual_tokens"] == 1.0
    assert {"eval/accuracy/fine", "eval/accuracy/coarse"} <= set(summary)


def test_grpo_trains_and_evaluates_on_a_visionthink_parquet(visionthink_dir, tmp_path, one_thread, capsys):
    """Two GRPO steps on the VisionThink-schema parquet; the held-out table has policy / low / full / oracle rows
    (per-kind rows from `info.use_tool`), and `adaptune eval RUN` writes that table and the Pareto plot."""
    from adaptune.cli import main
    from adaptune.rl.run import run_grpo_recipe
    from test_grpo import tiny_recipe

    spec = f"{{path: {visionthink_dir}, schema: visionthink}}"
    recipe = tiny_recipe(tmp_path / "run", f"grpo.data.dataset={spec}", "grpo.eval.num_images=4",
                         "grpo.eval.methods=[policy,low,full,oracle]")
    run_dir = run_grpo_recipe(recipe)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["data/rows"] == 8
    methods = summary["evaluation"]["methods"]
    assert set(methods) == {"policy", "low", "full", "oracle"}
    assert methods["low"]["all"]["visual_tokens"] < methods["full"]["all"]["visual_tokens"]
    assert set(methods["oracle"]) >= {"fine", "coarse"}
    # the oracle is per question (cheapest resolution whose greedy answer is right), not the `use_tool` kind
    needs_full = summary["evaluation"]["needs_full"]
    assert methods["oracle"]["all"]["resize_rate"] == sum(needs_full) / len(needs_full)
    assert methods["oracle"]["all"]["accuracy"] >= methods["low"]["all"]["accuracy"]
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--limit", "4", "--out", str(out)]) == 0
    table = json.loads((out / "eval.json").read_text())["results"]
    assert [r["method"] for r in table] == ["policy", "low", "full", "oracle"]
    assert all(r["n"] == 4 for r in table) and (out / "pareto.png").stat().st_size > 1000
