"""A dataset folder laid out like a Hugging Face Hub dataset repository: parquet shards plus a dataset card.

What: `write_dataset_folder(folder, {"default": dsd, "heldout_mix": mix}, card_data, body)` writes
`data/<split>-00000-of-0000N.parquet` for the first configuration (`<config>/<split>-...` for the others) and a
`README.md` whose YAML header says `configs` (data_files per split), `dataset_info` (features, splits, sizes),
license and tags. `datasets.load_dataset(folder)` reads it back (`load_dataset(folder, "heldout_mix")` for another
configuration), and so does adaptune's dataset resolver (`dataset: <folder>` in a recipe): the path any user's
parquet data takes. The folder can be pushed to the Hub as it is.

Why: `save_to_disk` folders load only with `load_from_disk`, carry no card (license, what the columns mean, how the
rows were made) and are not what a Hub repository holds.

    write_dataset_folder("data/glyphqa", {"default": generate_glyphqa()}, {"license": "apache-2.0"}, "# GlyphQA")
    datasets.load_dataset("data/glyphqa")["train"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def config_dir(name: str, first: bool) -> str:
    """The folder of a configuration's shards: `data` for the first (default) one, else its name."""
    return "data" if first else name


def write_dataset_folder(folder: str | Path, configs: Mapping[str, datasets.DatasetDict | datasets.Dataset],
                         card_data: Mapping[str, Any], body: str, rows_per_shard: int = 1000) -> Path:
    """Write every configuration's splits as parquet shards and a dataset card; return the README path.

    `configs` maps a configuration name to its splits (a `Dataset` is one `test` split if it has no split name);
    the first is the default. `card_data` is the card's YAML metadata (license, pretty_name, tags, ...); `configs`
    and `dataset_info` are filled in from the data. Stale shards of an earlier build are removed; a folder holding a
    `save_to_disk` copy is refused (the resolver would load that instead)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    folder = Path(folder)
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not configs:
        raise ValueError("no configuration to write")
    stale = [m for m in SAVED_MARKERS if (folder / m).exists()]
    if stale:
        raise FileExistsError(f"{folder} holds a save_to_disk copy ({stale[0]}); remove it or write elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    yaml_configs, infos = [], {}
    for index, (name, splits) in enumerate(configs.items()):
        if isinstance(splits, datasets.Dataset):
            splits = datasets.DatasetDict({str(splits.split or "test"): splits})
        subdir = folder / config_dir(name, index == 0)
        subdir.mkdir(exist_ok=True)
        for old in subdir.glob("*.parquet"):
            old.unlink()
        split_infos = datasets.SplitDict()
        files = []
        for split, ds in splits.items():
            shards = max(1, math.ceil(len(ds) / rows_per_shard))
            num_bytes = 0
            for i in range(shards):
                path = subdir / f"{split}-{i:05d}-of-{shards:05d}.parquet"
                ds.shard(shards, i, contiguous=True).to_parquet(str(path))
                num_bytes += path.stat().st_size
            split_infos.add(datasets.SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(ds)))
            files.append({"split": split, "path": f"{subdir.name}/{split}-*.parquet"})
        features = next(iter(splits.values())).features
        infos[name] = datasets.DatasetInfo(features=features, splits=split_infos,
                                           dataset_size=sum(s.num_bytes for s in split_infos.values()))
        yaml_configs.append({"config_name": name, "data_files": files, **({"default": True} if index == 0 else {})})
    data = DatasetCardData(**dict(card_data))
    data["configs"] = yaml_configs
    datasets.info.DatasetInfosDict(infos).to_dataset_card_data(data)
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")
    readme = folder / "README.md"
    card.save(str(readme))
    return readme


__all__ = ["config_dir", "write_dataset_folder"]
