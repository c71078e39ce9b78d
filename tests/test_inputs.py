from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import gradient, solid, write_video
from ume_plugins.errors import UMEInputError
from ume_plugins.inputs import InputPolicy, describe, load, located, origin_of, read
from ume_plugins.media import PixelPolicy

POLICY = InputPolicy()


def parse(raw, policy: InputPolicy = POLICY):
    return load(describe(raw, policy), policy)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    gradient((84, 56)).save(folder / "photo.png")
    gradient((84, 56), seed=1).save(folder / "my photo.jpg")
    frames = [solid((20 * i, 100, 200 - 20 * i), (56, 56)) for i in range(10)]
    write_video(folder / "clip.mp4", frames)
    return folder


def test_plain_string_is_text():
    item = parse("a cat on a sofa")
    assert item.text == "a cat on a sofa" and item.images == () and item.video is None


def test_string_and_pathlib_paths_are_images(files):
    expected = np.asarray(parse(files / "photo.png").images[0])
    assert np.array_equal(np.asarray(parse(str(files / "photo.png")).images[0]), expected)
    assert parse(str(files / "my photo.jpg")).images[0].size == (84, 56)


def test_string_naming_a_missing_media_file_is_an_error_not_text(files):
    with pytest.raises(UMEInputError, match="file not found"):
        parse(str(files / "missing.png"))
    assert parse("see the photo of my cat.png").text == "see the photo of my cat.png"


def test_text_that_looks_like_a_path_can_be_forced_as_text():
    assert parse({"text": "holiday.png"}).text == "holiday.png"


def test_pil_bytes_bytesio_and_data_uri_decode_to_the_same_pixels():
    image = gradient((84, 56))
    data = png_bytes(image)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    decoded = [parse(raw).images[0] for raw in (image, data, io.BytesIO(data), uri, bytearray(data))]
    for other in decoded[1:]:
        assert np.array_equal(np.asarray(other), np.asarray(decoded[0]))


def test_http_url_is_fetched(http_server):
    base_url, folder = http_server
    gradient((84, 56)).save(folder / "remote.png")
    item = parse(f"{base_url}/remote.png")
    assert np.array_equal(np.asarray(item.images[0]), np.asarray(parse(gradient((84, 56))).images[0]))


def test_urls_are_refused_when_network_is_off():
    offline = InputPolicy(fetch=POLICY.fetch.__class__(allow_network=False))
    with pytest.raises(UMEInputError, match="network access is disabled"):
        describe("https://example.com/cat.png", offline)


def test_image_arrays_and_tensors():
    image = gradient((84, 56))
    hwc = np.array(image)
    reference = np.asarray(parse(image).images[0])
    assert np.array_equal(np.asarray(parse(hwc).images[0]), reference)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    assert np.array_equal(np.asarray(parse(chw).images[0]), reference)
    assert np.array_equal(np.asarray(parse(hwc.astype(np.float32) / 255).images[0]), reference)


def test_dict_with_text_and_several_images_keeps_their_order():
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    item = parse({"text": "two", "image": [red, blue]})
    assert item.text == "two"
    assert [image.getpixel((0, 0)) for image in item.images] == [(255, 0, 0), (0, 0, 255)]


def test_images_are_fitted_to_multiples_of_28_within_bounds():
    assert parse(solid((1, 1, 1), (64, 64))).images[0].size == (56, 56)
    assert parse(solid((1, 1, 1), (20, 20))).images[0].size == (56, 56)  # raised to >= 3136 pixels
    small = InputPolicy(pixels=PixelPolicy(max_pixels=56 * 56))
    assert parse(solid((1, 1, 1), (280, 280)), small).images[0].size == (56, 56)
    already = solid((1, 1, 1), (112, 84))
    assert parse(already).images[0] is already  # nothing to do: left untouched


def test_alpha_is_composited_over_white():
    transparent = Image.new("RGBA", (56, 56), (255, 0, 0, 0))
    assert parse(transparent).images[0].getpixel((0, 0)) == (255, 255, 255)


def test_video_as_frame_list_is_sampled_to_eight_uniform_frames():
    frames = [solid((i, 0, 0), (56, 56)) for i in range(20)]
    item = parse({"video": frames})
    expected = np.linspace(0, 19, 8).astype(int)
    assert [frame.getpixel((0, 0))[0] for frame in item.video] == expected.tolist()


def test_odd_frame_counts_are_padded_with_the_last_frame():
    frames = [solid((i * 10, 0, 0), (56, 56)) for i in range(3)]
    item = parse({"video": frames})
    assert [frame.getpixel((0, 0))[0] for frame in item.video] == [0, 10, 20, 20]
    assert len(parse({"video": frames[:1]}).video) == 2


def test_video_as_frames_array():
    array = np.stack([np.full((56, 56, 3), i, dtype=np.uint8) for i in range(4)])
    assert [frame.getpixel((0, 0))[0] for frame in parse({"video": array}).video] == [0, 1, 2, 3]
    assert len(parse(array).video) == 4  # a bare 4-D array is a video


def test_video_file_is_decoded_and_sampled(files):
    item = parse(files / "clip.mp4")
    assert item.images == () and len(item.video) == 8
    assert parse({"video": str(files / "clip.mp4"), "text": "a clip"}).text == "a clip"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "got None"),
        (3.5, "unsupported input type float"),
        ({"txt": "typo"}, "unknown dict key"),
        ({}, "no content"),
        ({"video": []}, "empty frame list"),
        ({"image": []}, "empty list"),
        ({"text": 5}, "'text' must be a string"),
        (["nested", "list"], "nested list"),
        ({"role": "user", "content": "hi"}, "chat messages are not accepted"),
        (b"", "empty"),
        (b"not an image at all", "cannot decode image"),
        ("data:image/png;base64,@@@", "invalid base64"),
        (np.zeros((2, 2, 2, 2, 2), dtype=np.uint8), "2 or 3 dimensions"),
        ("file:///etc/hostname.png", "file:// URLs are disabled"),
    ],
)
def test_bad_inputs_raise_a_clear_error(raw, message):
    with pytest.raises(UMEInputError, match=message):
        parse(raw)


def test_corrupt_and_directory_and_empty_files(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(png_bytes(gradient())[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UMEInputError, match="cannot decode image"):
        parse(tmp_path / "broken.png")
    with pytest.raises(UMEInputError, match="file is empty"):
        parse(tmp_path / "empty.png")
    with pytest.raises(UMEInputError, match="not a regular file"):
        parse(tmp_path / "folder.png")


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(UMEInputError, match="aspect ratio"):
        parse(solid((0, 0, 0), (1, 300)))


def test_a_decoded_item_is_accepted_as_is():
    item = parse(gradient((84, 56)))
    assert read(item, POLICY) is item
    assert describe(item, POLICY).images[0].value is item.images[0]


def test_nested_located_blocks_name_the_outermost_index():
    undecodable = b"not an image"
    with located(["ok", undecodable], POLICY, indices=[40, 41]), located([undecodable], POLICY):
        assert origin_of(undecodable, 0) == 41
    with pytest.raises(UMEInputError, match="^Input 41: got None"), located(["ok", None], POLICY, indices=[40, 41]):
        pass


def test_a_stream_can_be_read_again():
    stream = io.BytesIO(png_bytes(gradient()))
    assert describe(stream, POLICY).images[0].value == describe(stream, POLICY).images[0].value


def test_video_frames_above_the_decoding_cap_are_refused_before_decoding(files):
    capped = InputPolicy(pixels=PixelPolicy(max_decoded_pixels=56 * 56 - 1))
    with pytest.raises(UMEInputError, match="56x56 pixels, above the 3135-pixel decoding cap"):
        parse(files / "clip.mp4", capped)
