"""Person names -> a placeholder (``[person]`` by default), in post texts and alt-texts.

Methods, chosen by ``[curate.names] method`` (``auto`` picks the first that works, and the choice
is recorded in every curated record and in the funnel):

- ``spacy``: the ``PERSON`` entities of a spaCy pipeline (``spacy_model``, e.g. en_core_web_sm);
- ``llm``: the endpoint of ``[curate.llm]`` lists the names as a JSON list (cached like every request);
- ``off``: nothing is replaced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcmdpo.curate.prompts import names_messages, parse_names
from mcmdpo.curate.spec import NamesSpec

if TYPE_CHECKING:
    from spacy.language import Language


def resolve_method(spec: NamesSpec) -> tuple[str, Language | None]:
    """(method actually used, the loaded spaCy pipeline or None)."""
    if spec.method in ("auto", "spacy"):
        try:
            import spacy

            return "spacy", spacy.load(spec.spacy_model)
        except (ImportError, OSError) as exc:
            if spec.method == "spacy":
                raise ValueError(
                    f"curate.names.method = 'spacy': cannot load {spec.spacy_model!r}: {exc}"
                ) from None
    return ("llm" if spec.method in ("auto", "llm") else "off"), None


def replace_names(text: str, names: Sequence[str], replacement: str) -> tuple[str, int]:
    """``text`` with every whole-word occurrence of ``names`` (longest first) replaced; the count."""
    total = 0
    for name in sorted(set(names), key=len, reverse=True):
        if name == replacement:
            continue
        text, n = re.subn(rf"(?<!\w){re.escape(name)}(?!\w)", replacement, text)
        total += n
    return text, total


def spacy_names(nlp: Language, text: str) -> list[str]:
    return [ent.text for ent in nlp(text).ents if ent.label_ == "PERSON"]


@dataclass
class NameReplacer:
    """Replaces names with the resolved method; ``llm`` needs an :class:`~mcmdpo.llm.LLMClient`."""

    spec: NamesSpec
    method: str
    nlp: Any = None
    client: Any = None

    async def replace(self, text: str) -> tuple[str, int, bool]:
        """(new text, names replaced, the names reply parsed)."""
        if self.method == "off":
            return text, 0, True
        if self.method == "spacy":
            found: list[str] | None = spacy_names(self.nlp, text)
        else:
            reply = await self.client.acomplete(names_messages(text))
            found = parse_names(reply.content)
        if found is None:
            return text, 0, False
        new, count = replace_names(text, found, self.spec.replacement)
        return new, count, True
