from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import gradient, solid, write_video
from ume_plugins.decoding import decode
from ume_plugins.errors import UMEInputError
from ume_plugins.inputs import parse
from ume_plugins.policy import InputPolicy
from ume_plugins.settings import EmbeddingSettings

POLICY = InputPolicy()
SETTINGS = EmbeddingSettings()


def read(raw, policy: InputPolicy = POLICY, settings: EmbeddingSettings = SETTINGS):
    return decode(parse(raw, 0, policy), policy, settings)


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
    item = read("a cat on a sofa")
    assert item.text == "a cat on a sofa" and item.images == () and item.video is None


def test_string_and_pathlib_paths_are_images(files):
    expected = np.asarray(read(files / "photo.png").images[0])
    assert np.array_equal(np.asarray(read(str(files / "photo.png")).images[0]), expected)
    assert read(str(files / "my photo.jpg")).images[0].size == (84, 56)


def test_string_naming_a_missing_media_file_is_an_error_not_text(files):
    with pytest.raises(UMEInputError, match="file not found"):
        read(str(files / "missing.png"))
    assert read("see the photo of my cat.png").text == "see the photo of my cat.png"


def test_text_that_looks_like_a_path_can_be_forced_as_text():
    assert read({"text": "holiday.png"}).text == "holiday.png"


def test_pil_bytes_bytesio_and_data_uri_decode_to_the_same_pixels():
    image = gradient((84, 56))
    data = png_bytes(image)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    decoded = [read(raw).images[0] for raw in (image, data, io.BytesIO(data), uri, bytearray(data))]
    for other in decoded[1:]:
        assert np.array_equal(np.asarray(other), np.asarray(decoded[0]))


def test_http_url_is_fetched(http_server):
    base_url, folder = http_server
    gradient((84, 56)).save(folder / "remote.png")
    item = read(f"{base_url}/remote.png")
    assert np.array_equal(np.asarray(item.images[0]), np.asarray(read(gradient((84, 56))).images[0]))


def test_urls_are_refused_when_network_is_off():
    offline = POLICY.with_options(allow_network=False)
    with pytest.raises(UMEInputError, match="network access is disabled"):
        parse("https://example.com/cat.png", 0, offline)


def test_image_arrays_and_tensors():
    image = gradient((84, 56))
    hwc = np.array(image)
    reference = np.asarray(read(image).images[0])
    assert np.array_equal(np.asarray(read(hwc).images[0]), reference)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    assert np.array_equal(np.asarray(read(chw).images[0]), reference)
    assert np.array_equal(np.asarray(read(hwc.astype(np.float32) / 255).images[0]), reference)


def test_dict_with_text_and_several_images_keeps_their_order():
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    item = read({"text": "two", "image": [red, blue]})
    assert item.text == "two"
    assert [image.getpixel((0, 0)) for image in item.images] == [(255, 0, 0), (0, 0, 255)]


def test_images_are_fitted_to_multiples_of_28_within_bounds():
    assert read(solid((1, 1, 1), (64, 64))).images[0].size == (56, 56)
    assert read(solid((1, 1, 1), (20, 20))).images[0].size == (56, 56)  # raised to >= 3136 pixels
    small = EmbeddingSettings(max_pixels=56 * 56)
    assert read(solid((1, 1, 1), (280, 280)), settings=small).images[0].size == (56, 56)
    already = solid((1, 1, 1), (112, 84))
    assert read(already).images[0] is already  # nothing to do: left untouched


def test_alpha_is_composited_over_white():
    transparent = Image.new("RGBA", (56, 56), (255, 0, 0, 0))
    assert read(transparent).images[0].getpixel((0, 0)) == (255, 255, 255)


def test_video_as_frame_list_is_sampled_to_eight_uniform_frames():
    frames = [solid((i, 0, 0), (56, 56)) for i in range(20)]
    item = read({"video": frames})
    expected = np.linspace(0, 19, 8).astype(int)
    assert [frame.getpixel((0, 0))[0] for frame in item.video] == expected.tolist()


def test_odd_frame_counts_are_padded_with_the_last_frame():
    frames = [solid((i * 10, 0, 0), (56, 56)) for i in range(3)]
    item = read({"video": frames})
    assert [frame.getpixel((0, 0))[0] for frame in item.video] == [0, 10, 20, 20]
    assert len(read({"video": frames[:1]}).video) == 2


def test_video_as_frames_array():
    array = np.stack([np.full((56, 56, 3), i, dtype=np.uint8) for i in range(4)])
    assert [frame.getpixel((0, 0))[0] for frame in read({"video": array}).video] == [0, 1, 2, 3]
    assert len(read(array).video) == 4  # a bare 4-D array is a video


def test_video_file_is_decoded_and_sampled(files):
    item = read(files / "clip.mp4")
    assert item.images == () and len(item.video) == 8
    assert read({"video": str(files / "clip.mp4"), "text": "a clip"}).text == "a clip"


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
        ({"role": "system", "content": "hi"}, "only one 'user' message"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "a conversation of 2 messages"),
        ({"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}, "must be 'text', 'image' or 'video'"),
        ({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "one text part"),
        (b"", "empty"),
        (b"not an image at all", "cannot decode image"),
        ("data:image/png;base64,@@@", "invalid base64"),
        (np.zeros((2, 2, 2, 2, 2), dtype=np.uint8), "2 or 3 dimensions"),
        ("file:///etc/hostname.png", "file:// URLs are disabled"),
    ],
)
def test_bad_inputs_raise_a_clear_error(raw, message):
    with pytest.raises(UMEInputError, match=message):
        read(raw)


def test_corrupt_and_directory_and_empty_files(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(png_bytes(gradient())[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UMEInputError, match="cannot decode image"):
        read(tmp_path / "broken.png")
    with pytest.raises(UMEInputError, match="file is empty"):
        read(tmp_path / "empty.png")
    with pytest.raises(UMEInputError, match="not a regular file"):
        read(tmp_path / "folder.png")


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(UMEInputError, match="aspect ratio"):
        read(solid((0, 0, 0), (1, 300)))


def test_a_parsed_input_keeps_its_index_through_parsing_and_decoding():
    spec = parse(gradient((84, 56)), 7, POLICY)
    assert parse(spec, 0, POLICY) is spec
    assert decode(spec, POLICY, SETTINGS).index == 7


def test_errors_name_the_index_given_when_parsing():
    with pytest.raises(UMEInputError, match="^Input 41: got None") as raised:
        parse(None, 41, POLICY)
    assert raised.value.index == 41
    undecodable = parse(b"not an image", 41, POLICY)  # structure is fine: only decoding fails
    with pytest.raises(UMEInputError, match="^Input 41: cannot decode image"):
        decode(undecodable, POLICY, SETTINGS)


def test_reading_a_stream_leaves_its_position_where_it_was():
    stream = io.BytesIO(png_bytes(gradient()))
    stream.seek(3)
    parse(stream, 0, POLICY)
    assert stream.tell() == 3


def test_a_user_chat_message_is_the_dict_input_it_describes(files):
    image = gradient((84, 56))
    as_dict = read({"text": "a fox", "image": [image, str(files / "photo.png")]})
    parts = [
        {"type": "text", "text": "a fox"},
        {"type": "image", "image": image},
        {"type": "image", "path": str(files / "photo.png")},
    ]
    for message in ({"role": "user", "content": parts}, [{"role": "user", "content": parts}]):
        item = read(message)
        assert item.text == as_dict.text and len(item.images) == 2
        for ours, expected in zip(item.images, as_dict.images, strict=True):
            assert np.array_equal(np.asarray(ours), np.asarray(expected))
    assert read({"role": "user", "content": "just text"}).text == "just text"


def test_video_frames_above_the_decoding_cap_are_refused_before_decoding(files):
    capped = InputPolicy(max_decoded_pixels=56 * 56 - 1)
    with pytest.raises(UMEInputError, match="56x56 pixels, above the 3135-pixel decoding cap"):
        read(files / "clip.mp4", capped)
