"""Prompt cleaning and tokenization give exactly what diffusers' PRXPipeline feeds its encoder."""

import numpy as np
import pytest

from prx_jax.testing_towers import train_tokenizer
from prx_jax.text import PromptTokenizer, basic_clean, clean_text

PROMPTS = [
    "",
    "  A PHOTO of a <person> at https://www.example.com/cat.png — ***SALE*** &amp; "
    "free shipping!! #123 @nick “quoted” 1920x1080 jc6640 page 12... this-is-my-cute-cat_ok ",
    " ".join(["the red cat sits on a blue house under the bright sky"] * 30),  # > 256 tokens
]
TRICKY = [
    "Ünïcödé: cafÃ© mojibake &lt;b&gt;bold&lt;/b&gt;",
    "'quoted'",
    "CJK 漢字 and ㇀ strokes, 127.0.0.1, file.jpeg, 12:34  ",
    "word , word . word : word",
    "%20encoded+url+text",
    "\\n newline 123456789 #99999 j2d1a2a",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def diffusers_pipe(folder):
    pytest.importorskip("torch")
    from diffusers import PRXPipeline
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    # _tokenize_prompts only touches the tokenizer and the text preprocessor
    pipe = PRXPipeline.__new__(PRXPipeline)
    from diffusers.pipelines.prx.pipeline_prx import TextPreprocessor

    pipe.__dict__.update(tokenizer=tok, text_preprocessor=TextPreprocessor())
    return pipe


def test_cleaning_matches_diffusers():
    pytest.importorskip("ftfy")
    from diffusers.pipelines.prx.pipeline_prx import TextPreprocessor

    ref = TextPreprocessor()
    for p in PROMPTS + TRICKY:
        assert clean_text(p) == ref.clean_text(p), p
        assert basic_clean(p) == ref.basic_clean(p), p
    assert clean_text(PROMPTS[1]) != PROMPTS[1].lower().strip()  # it did clean something


@pytest.mark.parametrize("skip", [False, True])
def test_ids_and_mask_match_diffusers(folder, diffusers_pipe, skip):
    tok = PromptTokenizer.from_folder(folder)
    assert tok.max_length == 256
    ids, mask = tok.tokenize(PROMPTS + TRICKY, skip_text_cleaning=skip)
    want_ids, want_mask = diffusers_pipe._tokenize_prompts(
        PROMPTS + TRICKY, "cpu", skip_text_cleaning=skip
    )
    np.testing.assert_array_equal(ids, want_ids.numpy())
    np.testing.assert_array_equal(mask, want_mask.numpy())
    assert ids.shape == (len(PROMPTS + TRICKY), 256) and ids.dtype == np.int32
    assert mask.dtype == bool
    assert not mask[0].any()  # the empty prompt: all padding
    assert mask[2].all()  # the long prompt is truncated to 256 tokens
    assert 0 < mask[1].sum() < 256


def test_tokenize_refuses_a_bare_string(folder):
    with pytest.raises(TypeError):
        PromptTokenizer.from_folder(folder).tokenize("a cat")
