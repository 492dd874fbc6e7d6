"""Bad inputs through the data path and the processors: converted as documented or refused by row and reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from adaptune.data.validate import InputError, prepare_image, prepare_question, prepare_vqa_row
from adaptune.models import build_tiny, get_family


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_truncated_and_garbage_files_are_refused_with_row():
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    with pytest.raises(InputError, match="row 7: unreadable or corrupt image"):
        prepare_image(data[: len(data) // 2], row=7)
    with pytest.raises(InputError, match="row x: unreadable or corrupt image"):
        prepare_image(b"not an image at all", row="x")


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_modes_become_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 20).astype(np.uint16))
    elif mode in ("I", "F"):
        image = rgb.convert("L").convert(mode)
    else:
        image = rgb.convert(mode)
    out = prepare_image(image)
    assert out.mode == "RGB" and out.size == (50, 40)
    if mode == "I;16":  # 16-bit is rescaled to the full 8-bit range, not clipped
        arr = np.asarray(out)
        assert arr.min() == 0 and arr.max() == 255


def test_transparent_pixels_composite_on_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert prepare_image(image).getpixel((5, 5)) == (255, 255, 255)


def test_tiny_and_extreme_aspect_images():
    assert min(prepare_image(Image.new("RGB", (1, 1))).size) == 32
    with pytest.raises(InputError, match=r"row 3: image 10000x10 has aspect ratio 1000"):
        prepare_image(Image.new("RGB", (10000, 10)), row=3)


def test_questions():
    assert prepare_question("  what colour?  ") == "what colour?"
    for bad, msg in [("", "empty"), ("   \n\t", "empty"), ("x" * 10_000, "10000 characters"),
                     (b"\xff\xfe bad", "not valid UTF-8"), (None, "must be text")]:
        with pytest.raises(InputError, match=msg):
            prepare_question(bad, row=1)
    assert prepare_question("caf\u00e9".encode()) == "caf\u00e9"


def test_missing_columns_named():
    with pytest.raises(InputError, match="row r1: missing column\\(s\\) answer"):
        prepare_vqa_row({"id": "r1", "image": Image.new("RGB", (32, 32)), "question": "q"})


@pytest.mark.parametrize("size", [(1, 1), (10, 2000), (33, 47)])
def test_converted_images_run_through_the_processor(size):
    model, processor = build_tiny("qwen3_vl")
    image = prepare_image(Image.new("P", size))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
        add_generation_prompt=True, tokenize=False)
    batch = processor(images=[image], text=[text], return_tensors="pt")
    spec = get_family("qwen3_vl")
    n = int((batch["input_ids"] == processor.image_token_id).sum())
    assert n == spec.visual_tokens(processor, image.height, image.width)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
