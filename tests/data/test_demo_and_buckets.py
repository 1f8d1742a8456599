"""PRX buckets against the published list; the demo dataset and its scorer."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from prx_jax.data import demo, scorer
from prx_jax.data.buckets import bucket_sizes, closest_bucket

# spec §8.6: the 27 buckets of the JIT / fine-t2i export (S = 1024, P = 32), W x H.
PUBLISHED_1024 = """704x1440 736x1408 736x1376 768x1344 768x1312 800x1280 832x1248 832x1216 864x1184
896x1152 928x1120 960x1088 992x1056 1024x1024 1056x992 1088x960 1120x928 1152x896 1184x864
1216x832 1248x832 1280x800 1312x768 1344x768 1376x736 1408x736 1440x704"""
PUBLISHED_256 = "160x352 192x320 224x288 256x256 288x224 320x192 352x160"


def _parse(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split()]


def test_buckets_match_published_lists():
    assert bucket_sizes(1024, 32) == _parse(PUBLISHED_1024)
    assert bucket_sizes(256, 32) == _parse(PUBLISHED_256)
    assert bucket_sizes(512, 16) == [(w // 2, h // 2) for w, h in _parse(PUBLISHED_1024)]


def test_closest_bucket():
    b = bucket_sizes(1024, 32)
    assert closest_bucket(1000, 1000, b) == (1024, 1024)
    assert closest_bucket(1920, 1080, b) == (1344, 768)  # 1.778 -> 1.75
    assert closest_bucket(100, 1000, b) == (704, 1440)  # beyond the range: the extreme bucket
    assert closest_bucket(1500, 1000, b) == (1248, 832)


def test_demo_is_deterministic_at_any_size():
    a, cap_a = demo.demo_example(3, 11, 80, 48)
    b, cap_b = demo.demo_example(3, 11, 80, 48)
    assert np.array_equal(a, b) and cap_a == cap_b and a.shape == (48, 80, 3)
    assert demo.demo_example(3, 12, 80, 48)[1] != cap_a or not np.array_equal(
        demo.demo_example(3, 12, 80, 48)[0], a
    )
    words = {w.strip(",") for c in demo.caption_corpus(500) for w in c.split()}
    assert words <= set(demo.VOCABULARY)


def test_demo_render_downscales_only_objects_yet_matches_the_whole_image_resize():
    """render() box-averages only the blocks under objects; the whole drawing resized must agree
    to the pixel, at the training sizes and at odd ones (a split inside a pixel)."""
    for i in range(240):
        w, h = [(64, 64), (80, 48), (48, 80), (33, 17), (9, 8), (57, 61)][i % 6]
        scene = demo.sample_scene(5, i)
        drawn, ss, _ = demo._draw(scene, w, h)
        want = np.asarray(drawn.resize((w, h), Image.Resampling.BOX))
        assert np.array_equal(demo.render(scene, w, h), want), (i, w, h, scene)


def test_scorer_on_own_images_and_shuffled_captions():
    own, noisy, shuffled = [], [], []
    rng = np.random.default_rng(0)
    for i in range(120):
        w, h = [(64, 64), (48, 80), (80, 48)][i % 3]
        img, cap = demo.demo_example(7, i, w, h)
        own.append(scorer.score(img, cap).accuracy)
        blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.7)), float)
        noisy.append(scorer.score(np.clip(blurred + rng.normal(0, 10, img.shape), 0, 255), cap))
        shuffled.append(scorer.score(img, demo.sample_scene(7, i + 5000).caption).accuracy)
    assert np.mean(own) >= 0.99
    assert np.mean([r.accuracy for r in noisy]) >= 0.95
    assert np.mean(shuffled) <= 0.5


def test_scorer_checks_and_input_ranges():
    img, cap = demo.demo_example(0, 0, 64, 64)
    result = scorer.score(img, cap)
    assert (
        result.accuracy == 1.0
        and "background" in result.checks
        and "object0.shape" in result.checks
    )
    x_CxHxW = img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    assert scorer.score(x_CxHxW, cap).accuracy == 1.0
    assert scorer.score_batch(x_CxHxW[None], [cap]) == 1.0
    claims, bg = scorer.parse_caption(
        "a small red circle in the top left corner on a light blue background"
    )
    assert claims == [scorer.Claim("circle", "red", "small", "top left")] and bg == ("light blue",)
