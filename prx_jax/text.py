"""Prompt cleaning and tokenization, exactly as diffusers' ``PRXPipeline`` does them.

``clean_text`` is a line-for-line port of ``TextPreprocessor.clean_text`` in diffusers'
``pipelines/prx/pipeline_prx.py`` (DeepFloyd-IF style: lower-case, strip URLs, HTML, punctuation
runs, ftfy); ``basic_clean`` is its ``skip_text_cleaning=True`` path. ``PromptTokenizer`` wraps the
pipeline's ``tokenizer/`` folder through ``transformers.AutoTokenizer`` (local files only) and pads
or truncates to ``max_length`` (256 for PRX) with a boolean mask. ftfy and transformers are
imported lazily; torch is never needed.
"""

from __future__ import annotations

import html
import re
import urllib.parse as ul
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_BAD_PUNCT = re.compile(
    r"["
    + "#®•©™&@·º½¾¿¡§~"
    + r"\)"
    + r"\("
    + r"\]"
    + r"\["
    + r"\}"
    + r"\{"
    + r"\|"
    + r"\\"
    + r"\/"
    + r"\*"
    + r"]{1,}"
)


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError as e:  # diffusers fails later with a NameError; say what is missing
        raise ImportError("prompt cleaning needs ftfy: pip install ftfy") from e
    return ftfy.fix_text(text)


def clean_text(text: str) -> str:
    """diffusers' ``TextPreprocessor.clean_text``, the default prompt cleaning of PRXPipeline."""
    text = str(text)
    text = ul.unquote_plus(text)
    text = text.strip().lower()
    text = re.sub("<person>", "person", text)

    # Remove all urls:
    text = re.sub(
        r"\b((?:https?|www):(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@))",
        "",
        text,
    )  # regex for urls

    # @<nickname>
    text = re.sub(r"@[\w\d]+\b", "", text)

    # 31C0—31EF CJK Strokes through 4E00—9FFF CJK Unified Ideographs
    text = re.sub(r"[\u31c0-\u31ef]+", "", text)
    text = re.sub(r"[\u31f0-\u31ff]+", "", text)
    text = re.sub(r"[\u3200-\u32ff]+", "", text)
    text = re.sub(r"[\u3300-\u33ff]+", "", text)
    text = re.sub(r"[\u3400-\u4dbf]+", "", text)
    text = re.sub(r"[\u4dc0-\u4dff]+", "", text)
    text = re.sub(r"[\u4e00-\u9fff]+", "", text)

    # все виды тире / all types of dash --> "-"
    text = re.sub(
        r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+",
        "-",
        text,
    )

    # кавычки к одному стандарту
    text = re.sub(r"[`´«»" "¨]", '"', text)
    text = re.sub(r"['']", "'", text)

    # &quot; and &amp
    text = re.sub(r"&quot;?", "", text)
    text = re.sub(r"&amp", "", text)

    # ip addresses:
    text = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", text)

    # article ids:
    text = re.sub(r"\d:\d\d\s+$", "", text)

    # \n
    text = re.sub(r"\\n", " ", text)

    # "#123", "#12345..", "123456.."
    text = re.sub(r"#\d{1,3}\b", "", text)
    text = re.sub(r"#\d{5,}\b", "", text)
    text = re.sub(r"\b\d{6,}\b", "", text)

    # filenames:
    text = re.sub(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", "", text)

    # Clean punctuation
    text = re.sub(r"[\"\']{2,}", r'"', text)  # """AUSVERKAUFT"""
    text = re.sub(r"[\.]{2,}", r" ", text)

    text = re.sub(_BAD_PUNCT, r" ", text)  # ***AUSVERKAUFT***, #AUSVERKAUFT
    text = re.sub(r"\s+\.\s+", r" ", text)  # " . "

    # this-is-my-cute-cat / this_is_my_cute_cat
    regex2 = re.compile(r"(?:\-|\_)")
    if len(re.findall(regex2, text)) > 3:
        text = re.sub(regex2, " ", text)

    # Basic cleaning
    text = _fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()

    # Clean alphanumeric patterns
    text = re.sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", text)  # jc6640
    text = re.sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", text)  # jc6640vc
    text = re.sub(r"\b\d+[a-zA-Z]+\d+\b", "", text)  # 6640vc231

    # Common spam patterns
    text = re.sub(r"(worldwide\s+)?(free\s+)?shipping", "", text)
    text = re.sub(r"(free\s)?download(\sfree)?", "", text)
    text = re.sub(r"\bclick\b\s(?:for|on)\s\w+", "", text)
    text = re.sub(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", "", text)
    text = re.sub(r"\bpage\s+\d+\b", "", text)

    text = re.sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" ", text)  # j2d1a2a...
    text = re.sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", "", text)

    # Final cleanup
    text = re.sub(r"\b\s+\:\s+", r": ", text)
    text = re.sub(r"(\D[,\./])\b", r"\1 ", text)
    text = re.sub(r"\s+", " ", text)

    text = re.sub(r"^[\"\']([\w\W]+)[\"\']$", r"\1", text)
    text = re.sub(r"^[\'\_,\-\:;]", r"", text)
    text = re.sub(r"[\'\_,\-\:\-\+]$", r"", text)
    text = re.sub(r"^\.\S+$", "", text)

    return text.strip()


def basic_clean(text: str) -> str:
    """diffusers' ``TextPreprocessor.basic_clean`` (``skip_text_cleaning=True``)."""
    text = _fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


class PromptTokenizer:
    """The pipeline's tokenizer: ``tokenize(prompts) -> (ids [B, L] int32, mask [B, L] bool)``.

    ``max_length`` None takes the tokenizer's ``model_max_length`` (256 in PRX's folders), like
    diffusers' ``_tokenize_prompts``; prompts are cleaned first unless ``clean=False``.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = int(max_length or tokenizer.model_max_length)
        if self.max_length > 100_000:  # transformers' "no limit" sentinel is ~1e30
            raise ValueError("the tokenizer has no model_max_length: pass max_length=")

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int | None = None) -> PromptTokenizer:
        from transformers import AutoTokenizer

        folder = Path(folder)
        if (folder / "model_index.json").exists():
            folder = folder / "tokenizer"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no tokenizer folder")
        return cls(AutoTokenizer.from_pretrained(str(folder), local_files_only=True), max_length)

    def clean(self, prompts: Sequence[str], skip_text_cleaning: bool = False) -> list[str]:
        fn = basic_clean if skip_text_cleaning else clean_text
        return [fn(p) for p in prompts]

    def tokenize(
        self, prompts: Sequence[str], clean: bool = True, skip_text_cleaning: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        texts = self.clean(prompts, skip_text_cleaning) if clean else list(prompts)
        out = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(bool)
