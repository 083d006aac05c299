"""Per-record filters of the scan stage: hashtags, short alt-texts, language, non-static images.

Each returns the name of the filter a record fails (the funnel step that drops it) or None.
Language identification uses ``py3langid`` (langid.py's model, packaged in the wheel, offline):
the probability of the wanted language, normalised over its 97 languages, must reach the threshold.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mcmdpo.curate.spec import FilterSpec

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

HASHTAG = re.compile(r"(?<![\w&])#\w")
"""``#`` + a word character, not inside a word (``C#``) or an HTML entity (``&#39;``)."""


def has_hashtag(text: str) -> bool:
    return HASHTAG.search(text) is not None


def word_count(text: str) -> int:
    return len(text.split())


@lru_cache(maxsize=1)
def _identifier() -> LanguageIdentifier:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_prob(text: str, language: str) -> float:
    """py3langid's normalised probability that ``text`` is in ``language`` (an ISO 639-1 code)."""
    ranked = dict(_identifier().rank(text))
    return float(ranked.get(language, 0.0))


def text_filter(context: str, alt_text: str, spec: FilterSpec) -> str | None:
    """The first text filter the record fails: ``hashtag``, ``min_words``, ``language``; or None."""
    if spec.drop_hashtags and has_hashtag(alt_text):
        return "hashtag"
    if word_count(alt_text) < spec.min_words:
        return "min_words"
    if spec.min_language_prob > 0:
        for text in (alt_text, context):
            if language_prob(text, spec.language) < spec.min_language_prob:
                return "language"
    return None


def is_non_static(source: Path | bytes) -> tuple[bool, str]:
    """(GIF file or animated WebP / APNG, the PIL format name); the image must already decode."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        fmt = image.format or ""
        animated = bool(getattr(image, "is_animated", False))
    return fmt == "GIF" or animated, fmt
