"""The LLM prompts of curation and the parsers of their replies.

The grammar-correction and rejected-alt-text prompts are the paper's appendix B, verbatim (the
appendix's ``{alt-text}`` is :data:`GRAMMAR_PROMPT`'s ``{text}``: the pipeline corrects post texts
and alt-texts with it, Sec. 4.3). The reply format the grammar prompt asks for is ``True`` or
``False``, then after ``True`` the corrected text in quotes; :func:`parse_grammar` reads it and the
usual variants (quotes or not, ``True.``, ``**True**``, a prefix such as ``Answer:``, the ``(1)``/``(2)``
numbering of the prompt echoed back, text on the same line or the next ones). The verification and
person-name prompts are ours (the paper gives only their contract).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

GRAMMAR_PROMPT = (
    "Your task is to check the given text for grammatical errors. Are there any grammatical errors in the "
    "following text?\n{text}\nPlease generate the final judgment strictly in the following format:\n"
    "(1) If there are any grammatical errors, then output 'True'; otherwise output 'False'.\n"
    "(2) If your answer is True, then you need to provide the text after correcting the grammar issue in "
    'the following format: "Corrected text."\n'
    "Make as few modifications as possible.\n"
    "If your answer is False, then no further changes are needed."
)
"""Paper, appendix B (verbatim; one line per line of the appendix)."""

REJECTED_PROMPT = (
    "Given the best alt-text of an image and context. If you are writing the alt-text for the given image, "
    "what kind of suboptimal alt-text will you write?\nContext:\n{context}\nBest alt-text:\n{alt_text}\n"
    "Suboptimal alt-text:"
)
"""Paper, appendix B (verbatim)."""

VERIFY_PROMPT = (
    "Given the context of an image and two alt-texts written for the image, which alt-text is better?\n"
    "Context:\n{context}\n"
    "Alt-text A: {a}\n"
    "Alt-text B: {b}\n"
    "Answer with the letter of the better alt-text: A or B."
)
"""Ours: the candidates sit on lines that start exactly with ``Alt-text A:`` / ``Alt-text B:``."""

NAMES_PROMPT = (
    "List the names of real people that appear in the following text, exactly as they are written in "
    "it. Answer with a JSON list of strings only, and [] if there are none.\nText:\n{text}"
)
"""Ours: the LLM fallback of person-name replacement."""


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def grammar_messages(text: str) -> list[dict[str, str]]:
    return user(GRAMMAR_PROMPT.format(text=text))


def rejected_messages(context: str, alt_text: str) -> list[dict[str, str]]:
    return user(REJECTED_PROMPT.format(context=context, alt_text=alt_text))


def verify_messages(context: str, a: str, b: str) -> list[dict[str, str]]:
    return user(VERIFY_PROMPT.format(context=context, a=_one_line(a), b=_one_line(b)))


def names_messages(text: str) -> list[dict[str, str]]:
    return user(NAMES_PROMPT.format(text=text))


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a candidate must not add lines of its own to the prompt


# ---------------------------------------------------------------- parsers

QUOTES = "\"'`“”‘’"


def strip_quotes(text: str) -> str:
    """Strip whitespace and surrounding pairs of quotes."""
    text = text.strip()
    while len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    return text


@dataclass(frozen=True)
class GrammarVerdict:
    """``errors``: the first line said True; ``text``: the corrected text (or the original)."""

    text: str
    errors: bool
    parsed: bool


_MARKS = "*_`\"'“”‘’"
VERDICT = re.compile(
    rf"^[\s{_MARKS}(\[]*"  # markup and quotes before the verdict
    r"(?:(?:final\s+)?(?:answer|judg(?:e)?ment|verdict|output|result|response)\s*[:\-]\s*)?"  # a label
    rf"[\s{_MARKS}]*(?:\(?1[).:]\s*)?[\s{_MARKS}]*"  # the prompt's "(1)" echoed back
    rf"(true|false)[{_MARKS}]*[.,;:!)\]]*[{_MARKS}]*(?=\s|$)",
    re.IGNORECASE,
)
CORRECTED_LABEL = re.compile(
    r"^(?:\(?2[).:]\s*)?(?:(?:the\s+)?corrected\s+text\s*(?:is)?\s*[:\-]\s*)?", re.IGNORECASE
)
QUOTED = re.compile(r"^[\"“'‘](.*?)[\"”'’]\s*(?:\n|$)", re.DOTALL)


def parse_grammar(reply: str, original: str) -> GrammarVerdict:
    """The paper's reply format: ``True`` or ``False``, then (after ``True``) the corrected text in
    quotes: ``True\n"Corrected text."``. Tolerated: quotes or not, ``True.``, markup, a label such as
    ``Answer:``, the prompt's ``(1)``/``(2)`` echoed, ``Corrected text:``, the text on the same line, an
    explanation after the quoted text. ``False`` keeps the original; anything else (or ``True`` with no
    text) keeps it and is unparsed."""
    found = VERDICT.match(reply.strip())
    if found is None:
        return GrammarVerdict(original, False, False)
    if found.group(1).lower() == "false":
        return GrammarVerdict(original, False, True)
    rest = CORRECTED_LABEL.sub("", reply.strip()[found.end() :].strip(), count=1).strip()
    quoted = QUOTED.match(rest)
    corrected = strip_quotes(quoted.group(1) if quoted else rest)
    if corrected:
        return GrammarVerdict(corrected, True, True)
    return GrammarVerdict(original, False, False)


def parse_rejected(reply: str) -> str:
    """The generated text: surrounding quotes and a repeated ``Suboptimal alt-text:`` label stripped."""
    text = strip_quotes(reply)
    text = re.sub(r"^\s*suboptimal alt-text\s*:\s*", "", text, flags=re.IGNORECASE)
    return strip_quotes(text)


CHOICE = re.compile(r"(?<![A-Za-z0-9])([AB])(?![A-Za-z0-9])")


def parse_choice(reply: str) -> str | None:
    """The first standalone ``A`` or ``B`` of the reply (None when there is none)."""
    match = CHOICE.search(reply)
    return match.group(1) if match else None


def parse_names(reply: str) -> list[str] | None:
    """The JSON list of names in the reply (None when there is none)."""
    match = re.search(r"\[.*\]", reply, flags=re.DOTALL)
    if match is None:
        return None
    try:
        names = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(names, list):
        return None
    return [n.strip() for n in names if isinstance(n, str) and n.strip()]


def same_text(a: str, b: str) -> bool:
    """Equal after lowercasing, collapsing whitespace and dropping surrounding punctuation."""

    def norm(text: str) -> str:
        return " ".join(text.lower().split()).strip(" .!?,;:" + QUOTES)

    return norm(a) == norm(b)
