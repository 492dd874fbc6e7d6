"""Input validation (`adaptune.data.validate`) rule by rule: the policy's limits exactly at their boundaries, every
input shape an image may come in, each conversion's pixel values, the upscaling size and filter, and the exact
messages (they name the row). Written against `make mutate MODULES=validate` (issue 19); tests/test_bad_inputs.py
and tests/test_image_paths.py cover the same rules through the processors and the loaders.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path
from types import MappingProxyType

import datasets
import numpy as np
import pytest
from PIL import Image

from adaptune.data.validate import (
    InputError,
    InputPolicy,
    check_dataset_images,
    prepare_image,
    prepare_question,
    prepare_vqa_row,
    to_rgb,
)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_policy_defaults():
    p = InputPolicy()
    assert (p.min_side, p.max_aspect, p.max_question_chars, p.max_pixels) == (32, 200.0, 2000, 89_478_485)
    assert InputError.__mro__[1] is ValueError


def test_row_zero_and_no_row_are_named():
    with pytest.raises(InputError, match=r"^row 0: question is empty$"):
        prepare_question(" ", row=0)
    with pytest.raises(InputError, match=r"^input: question is empty$"):
        prepare_question(" ")


def test_pixel_limit_is_inclusive_and_checked_for_every_input_shape(tmp_path: Path):
    policy = InputPolicy(max_pixels=40 * 40, min_side=1)
    assert prepare_image(Image.new("RGB", (40, 40)), policy=policy).size == (40, 40)
    assert prepare_image(png(Image.new("RGB", (40, 40))), policy=policy).size == (40, 40)
    message = (r"^row 5: image 41x40 has 1,640 pixels, above the limit of 1,600 \(InputPolicy.max_pixels; a "
               r"decompression bomb or an image to downscale first\)$")
    with pytest.raises(InputError, match=message):
        prepare_image(Image.new("RGB", (41, 40)), row=5, policy=policy)
    with pytest.raises(InputError, match=message):
        prepare_image(png(Image.new("RGB", (41, 40))), row=5, policy=policy)


def test_image_input_shapes(tmp_path: Path):
    image = Image.new("RGB", (33, 34), (1, 2, 3))
    path = tmp_path / "a.png"
    image.save(path)
    data = png(image)
    for obj in (data, bytearray(data), str(path), path, {"bytes": data, "path": None},
                {"bytes": None, "path": str(path)}, {"path": str(path)}, {"bytes": data}):
        out = prepare_image(obj)
        assert out.size == (33, 34) and out.getpixel((0, 0)) == (1, 2, 3), obj
    with pytest.raises(InputError, match=r"^row 2: image must be a PIL image, bytes or a path, got int$"):
        prepare_image(5, row=2)
    with pytest.raises(InputError, match=r"^input: image must be a PIL image, bytes or a path, got dict$"):
        prepare_image({"other": 1})
    with pytest.raises(InputError, match=r"^row 1: unreadable or corrupt image \(UnidentifiedImageError: "):
        prepare_image(b"garbage", row=1)
    with pytest.raises(InputError, match=r"^row 1: unreadable or corrupt image \(FileNotFoundError: "):
        prepare_image(tmp_path / "missing.png", row=1)


def test_bombs_between_pil_warning_and_error_are_left_to_our_limit():
    # 10000 x 10000 = 1e8 pixels: above PIL's warning limit (89.5M), below its error limit (2x). With our limit
    # raised the header check passes, PIL's warning is silenced and decoding the truncated payload fails.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"^row 3: unreadable or corrupt image"):
            prepare_image(png_header(10_000, 10_000), row=3, policy=InputPolicy(max_pixels=10**12))
    with pytest.raises(InputError, match=r"^row 3: decompression bomb refused \(Image size"):
        prepare_image(png_header(20_000, 20_000), row=3, policy=InputPolicy(max_pixels=10**12))


def test_sixteen_bit_and_float_rescale_from_min_to_max():
    arr = np.array([[1000, 1500, 3000]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr)))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 64, 255]  # (500 / 2000) * 255 = 63.75 -> 64
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constant: all black, no 0/0 (numpy would warn "invalid value")
        flat = np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 7.5, dtype=np.float32))))
    assert flat.max() == 0
    for mode in ("I;16B", "I;16L"):  # big- and little-endian 16-bit files
        raw = np.array([[1000, 3000]], dtype=">u2" if mode == "I;16B" else "<u2").tobytes()
        out = np.asarray(to_rgb(Image.frombytes(mode, (2, 1), raw)))
        assert out[0, :, 0].tolist() == [0, 255], mode
    floats = np.asarray(to_rgb(Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))))
    assert floats[0, :, 0].tolist() == [0, 128, 255]  # 127.5 rounds to 128 (truncation would give 127)
    ints = np.asarray(to_rgb(Image.fromarray(np.array([[10, 20]], dtype=np.int32), mode="I")))
    assert ints[0, :, 0].tolist() == [0, 255]


def test_alpha_goes_on_white_and_other_modes_convert():
    rgb = Image.new("RGB", (2, 2), (10, 20, 30))
    assert to_rgb(rgb) is rgb
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)  # composited on white (on black it would be 0)
    assert to_rgb(Image.new("LA", (1, 1), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("PA", (1, 1), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBa", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0, 0, 0, 0] + [0] * 759)  # entries 0 and 2 are both black
    palette.putpixel((1, 0), 1)
    palette.putpixel((2, 0), 2)
    palette.info["transparency"] = 0  # only entry 0 is transparent (via RGB, every black pixel would be)
    assert [to_rgb(palette).getpixel((x, 0)) for x in (0, 1, 2)] == [(255, 255, 255), (200, 0, 0), (0, 0, 0)]
    del palette.info["transparency"]
    assert [to_rgb(palette).getpixel((x, 0)) for x in (0, 1, 2)] == [(0, 0, 0), (200, 0, 0), (0, 0, 0)]
    assert to_rgb(Image.new("L", (1, 1), 9)).getpixel((0, 0)) == (9, 9, 9)
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).mode == "RGB"


def test_a_mode_pil_cannot_convert_is_an_input_error_naming_the_row():
    """Premultiplied "La" (only `Image.new` makes one) has no conversion to RGB in PIL: a clear InputError, not
    PIL's ValueError from inside a data loader."""
    with pytest.raises(InputError, match=r"^row 7: cannot convert a 'La' image to RGB \(.*La.*\)$"):
        prepare_image(Image.new("La", (4, 4)), 7)


def test_aspect_limit_is_inclusive_and_named():
    policy = InputPolicy(max_aspect=4.0, min_side=1)
    assert prepare_image(Image.new("RGB", (8, 2)), policy=policy).size == (8, 2)
    assert prepare_image(Image.new("RGB", (2, 8)), policy=policy).size == (2, 8)
    with pytest.raises(InputError, match=r"^row 9: image 9x2 has aspect ratio 4, above the supported 4; crop or "
                                         r"pad it first$"):
        prepare_image(Image.new("RGB", (9, 2)), row=9, policy=policy)
    with pytest.raises(InputError, match=r"^row 9: image 2x9 has aspect ratio"):
        prepare_image(Image.new("RGB", (2, 9)), row=9, policy=policy)
    with pytest.raises(InputError, match=r"^row 0: empty image \(0x5\)$"):
        prepare_image(Image.new("RGB", (0, 5)), row=0)
    with pytest.raises(InputError, match=r"empty image \(5x0\)"):
        prepare_image(Image.new("RGB", (5, 0)))


def test_small_images_upscale_to_min_side_bicubic():
    policy = InputPolicy(min_side=10)
    assert prepare_image(Image.new("RGB", (10, 30)), policy=policy).size == (10, 30)  # at min_side: untouched
    assert prepare_image(Image.new("RGB", (5, 7)), policy=policy).size == (10, 14)
    assert prepare_image(Image.new("RGB", (7, 5)), policy=policy).size == (14, 10)
    assert prepare_image(Image.new("RGB", (3, 4)), policy=policy).size == (10, 13)  # round(13.33)
    assert prepare_image(Image.new("RGB", (6, 9)), policy=policy).size == (10, 15)
    assert prepare_image(Image.new("RGB", (3, 5)), policy=policy).size == (10, 17)  # round(16.67)
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    out = prepare_image(small, policy=InputPolicy(min_side=8))
    assert out.size == (10, 8)
    assert np.array_equal(np.asarray(out), np.asarray(small.resize((10, 8), Image.BICUBIC)))


def test_questions_exactly():
    policy = InputPolicy(max_question_chars=5)
    assert prepare_question(" abcd", policy=policy) == "abcd"
    assert prepare_question("abcde", policy=policy) == "abcde"
    with pytest.raises(InputError, match=r"^row 4: question has 6 characters, above the limit of 5 "
                                         r"\(InputPolicy.max_question_chars\)$"):
        prepare_question("abcdef", row=4, policy=policy)
    assert prepare_question(bytearray(b" q ")) == "q"
    with pytest.raises(InputError, match=r"^row 4: question is not valid UTF-8 \(byte 2\)$"):
        prepare_question(b"ab\xff", row=4)
    with pytest.raises(InputError, match=r"^input: question must be text, got int$"):
        prepare_question(3)


def test_vqa_rows():
    image = Image.new("L", (40, 40), 5)
    row = {"id": "r1", "image": image, "question": b" q? ", "answer": b" 42 ", "extra": 1}
    out = prepare_vqa_row(row)
    assert out["image"].mode == "RGB" and out["question"] == "q?" and out["answer"] == "42" and out["extra"] == 1
    assert row["image"] is image  # a copy: the input row is not changed
    assert prepare_vqa_row({"image": image, "question": "q", "answer": 7}, index=3)["answer"] == "7"
    with pytest.raises(InputError, match=r"^row 3: missing column\(s\) image, answer$"):
        prepare_vqa_row({"question": "q", "answer": None, "image": None}, index=3)
    with pytest.raises(InputError, match=r"^row r2: answer is empty$"):
        prepare_vqa_row({"id": "r2", "image": image, "question": "q", "answer": "  "})
    with pytest.raises(InputError, match=r"^row r2: question is empty$"):
        prepare_vqa_row({"id": "r2", "image": image, "question": " ", "answer": "a"})
    with pytest.raises(InputError, match=r"^row r2: unreadable or corrupt image"):
        prepare_vqa_row({"id": "r2", "image": b"xx", "question": "q", "answer": "a"})
    with pytest.raises(InputError, match=r"^row r2: question is not valid UTF-8"):
        prepare_vqa_row({"id": "r2", "image": image, "question": "q", "answer": b"\xff"})
    strict = InputPolicy(max_question_chars=3, min_side=40)
    with pytest.raises(InputError, match=r"^row r3: question has 4 characters, above the limit of 3"):
        prepare_vqa_row({"id": "r3", "image": image, "question": "abcd", "answer": "a"}, policy=strict)
    with pytest.raises(InputError, match=r"^row r3: question has 4 characters"):  # a bytes answer: same rules
        prepare_vqa_row({"id": "r3", "image": image, "question": "q", "answer": b"abcd"}, policy=strict)
    small = prepare_vqa_row({"image": Image.new("RGB", (20, 20)), "question": "q", "answer": "a"}, policy=strict)
    assert small["image"].size == (40, 40)
    proxy = MappingProxyType({"id": "r5", "image": image, "question": "q", "answer": " "})
    with pytest.raises(InputError, match=r"^row 2: answer is empty$"):  # not a dict: named by its index
        prepare_vqa_row(proxy, index=2)  # type: ignore[arg-type]
    no_answer = prepare_vqa_row({"image": image, "question": "q", "answer": b"raw"}, required=("image", "question"))
    assert no_answer["answer"] == b"raw"
    with pytest.raises(InputError, match=r"^input: missing column\(s\) question$"):
        prepare_vqa_row({"image": image}, required=("image", "question"))


def test_dataset_images_are_checked_with_the_row_id_or_index(tmp_path: Path):
    good = png(Image.new("RGB", (40, 40)))
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": None}, None],
                                     "id": ["a", "b"]}, features=features)
    check_dataset_images(ds)
    check_dataset_images(ds, columns=("missing", "id"))  # absent and non-image columns are skipped
    bad = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": None}, {"bytes": b"xx", "path": None}],
                                      "id": ["a", "b"]}, features=features)
    with pytest.raises(InputError, match=r"^row b: unreadable"):
        check_dataset_images(bad)
    with pytest.raises(InputError, match=r"^row b: unreadable"):  # skipping a column goes on to the next one
        check_dataset_images(bad, columns=("missing", "id", "image"))
    plain = datasets.Dataset.from_dict({"image": [{"bytes": b"xx", "path": None}]},
                                       features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(InputError, match=r"^row 0: unreadable"):
        check_dataset_images(plain)
    none_id = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": None}, {"bytes": b"x", "path": None}],
                                          "id": ["a", None]}, features=features)
    with pytest.raises(InputError, match=r"^row 1: unreadable"):
        check_dataset_images(none_id)
    with pytest.raises(InputError, match=r"^row a: image 40x40 has 1,600 pixels"):
        check_dataset_images(ds, policy=InputPolicy(max_pixels=100))
