"""Does the model's state at the resize decision encode whether the image needs the full resolution?

The resolution policy decides in its first turn, from the half-resolution image and the question. On GlyphQA with two
digit sizes (docs/glyphqa.md#two-digit-sizes) the question text is the same for small digits (need the full image)
and large ones (readable at half resolution), so only the image can tell them apart. This script renders the
first-turn prompt of N digit questions exactly as the policy sees it, takes the hidden state at the last prompt
position (where the first answer token is decided) from every layer, and fits a logistic-regression probe (5-fold
cross-validation, L2) that predicts "large digit". A held-out accuracy well above the majority share means the
information is linearly present where the decision is made; RL then "only" has to use it.

    python benchmarks/probe_decision_state.py                      # the embedded default (before RL)
    python benchmarks/probe_decision_state.py --adapter adaptune/default/assets/policy --num 200

Writes benchmarks/results/probe_decision_state.json. One torch thread; ~1-2 minutes on 2 CPU cores for 160 images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


def decision_states(num: int, seed: int, adapter: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(num, layers + 1, hidden) last-position hidden states of the first-turn prompts, and 1.0 for large digits."""
    from adaptune.budget.protocol import user_messages
    from adaptune.budget.resolution import downsample
    from adaptune.budget.two_turn import render
    from adaptune.data.glyphqa import GlyphQAConfig, build_split
    from adaptune.models import load_model

    loaded = load_model("default", tool_calling=True)
    model = loaded.model
    if adapter:
        from adaptune.adapters import load_adapter

        model = load_adapter(model, adapter)
    model.eval()
    rows = build_split(GlyphQAConfig(seed=seed, large_digit_fraction=0.5), "test", num_images=num, fine_fraction=1.0)
    states, large = [], []
    with torch.no_grad():
        for image, question, size in tqdm(list(zip(rows["image"], rows["question"], rows["digit_size"])),
                                          desc="decision states"):
            text = render(loaded.processor, user_messages(question), generation_prompt=True)
            inputs = loaded.processor(text=[text], images=[[downsample(image, 0.5)]], return_tensors="pt")
            out = model(**inputs, output_hidden_states=True)
            states.append(torch.stack([h[0, -1] for h in out.hidden_states]).float().numpy())
            large.append(float(size == "large"))
    return np.stack(states), np.array(large)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, l2: float = 1e-2, seed: int = 0) -> float:
    """Mean held-out accuracy of an L2 logistic regression over `folds` cross-validation folds."""
    order = np.random.default_rng(seed).permutation(len(labels))
    accuracies = []
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        x = torch.tensor((features[train] - mean) / std, dtype=torch.float32)
        x_held = torch.tensor((features[held] - mean) / std, dtype=torch.float32)
        y = torch.tensor(labels[train], dtype=torch.float32)
        w = torch.zeros(features.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=200)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            predicted = ((x_held @ w + b) > 0).float().numpy()
        accuracies.append(float((predicted == labels[held]).mean()))
    return float(np.mean(accuracies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=160, help="digit questions (half small, half large digits)")
    parser.add_argument("--seed", type=int, default=5, help="GlyphQA seed of the test images")
    parser.add_argument("--adapter", help="a policy adapter folder (default: the base model, before RL)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "probe_decision_state.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    states, large = decision_states(args.num, args.seed, args.adapter)
    majority = float(max(large.mean(), 1 - large.mean()))
    layers = [probe_accuracy(states[:, layer], large) for layer in range(states.shape[1])]
    result = {"adapter": args.adapter, "num": args.num, "seed": args.seed, "large_share": float(large.mean()),
              "majority_baseline": majority, "probe_accuracy_by_layer": layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"majority baseline {majority:.3f}; probe accuracy by layer (0 = embeddings): "
          + ", ".join(f"{a:.3f}" for a in layers))


if __name__ == "__main__":
    main()
