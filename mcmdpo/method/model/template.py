"""LLaVA v1 conversation templates (upstream ``conv_vicuna_v1``, ``conv_llava_v1``) and their token pieces.

Two templates, identical but for the system text (upstream ``llava/conversation.py``):

- ``vicuna_v1`` (``conv_vicuna_v1``, "... a curious user ... the user's questions."): what upstream
  **trains** with (``--version v1`` in ``scripts/*.sh`` selects ``conv_templates["v1"] =
  conv_vicuna_v1``); the training and reference stages always use it.
- ``llava_v1`` (``conv_llava_v1``, "... a curious human ... the human's questions."): what upstream
  **generates** with (``mcmdpo_inference.py``: ``conv_templates['llava_v1']``); the default of
  ``[eval] template``.

Both use ``SeparatorStyle.TWO`` with ``sep=" "`` and ``sep2="</s>"``; the first user message is
``"<image>\\n" + question``. A one-turn training conversation therefore reads::

    {SYSTEM} USER: <image>\\n{question} ASSISTANT: {answer}</s>

and the generation prompt stops at ``"ASSISTANT:"``. Upstream tokenises the text around ``<image>`` chunk
by chunk (``tokenizer_image_token``: each chunk separately, BOS kept only on the first); the pieces
below follow the same split so that the log-prob engine can share the prefix between conditions:

    prefix ids  = BOS + tokens("{SYSTEM} USER: ")
    image       = ``num_image_tokens`` copies of the image token id
    context ids = tokens("\\n{question} ASSISTANT:")   (training: the stripped question, see below)
    answer ids  = tokens(" {answer}") + [EOS]   (the answer as it tokenises after "ASSISTANT:")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""``conv_vicuna_v1.system``: the training template's system text."""
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""``conv_llava_v1.system``: the system text of upstream inference (``mcmdpo_inference.py``)."""
TEMPLATES: dict[str, str] = {"vicuna_v1": SYSTEM, "llava_v1": LLAVA_V1_SYSTEM}
"""Template name -> system text (roles and separators are the same)."""
TRAINING_TEMPLATE = "vicuna_v1"
INFERENCE_TEMPLATE = "llava_v1"
ROLES = ("USER", "ASSISTANT")
SEP = " "
SEP2 = "</s>"
IMAGE_TOKEN = "<image>"

# Answers are tokenised as a continuation of this anchor so that the first answer token carries the
# leading space exactly as it does inside the full conversation, whatever the tokenizer family.
_ANSWER_ANCHOR = f"{ROLES[1]}:"


@dataclass(frozen=True)
class PromptPieces:
    """Token ids of one (image, question[, answer]) conversation, split where conditions branch."""

    prefix_ids: tuple[int, ...]
    num_image_tokens: int
    context_ids: tuple[int, ...]
    answer_ids: tuple[int, ...] = ()

    def input_ids(self, image_token_id: int) -> list[int]:
        """The full sequence: prefix, image placeholders, context, answer."""
        image = [image_token_id] * self.num_image_tokens
        return [*self.prefix_ids, *image, *self.context_ids, *self.answer_ids]

    def labels(self, image_token_id: int, ignore_index: int = -100) -> list[int]:
        """Answer-only labels aligned with :meth:`input_ids` (everything before the answer ignored)."""
        return [ignore_index] * self.prompt_length + list(self.answer_ids)

    @property
    def prompt_length(self) -> int:
        """Tokens before the (first) answer, image placeholders included."""
        return len(self.prefix_ids) + self.num_image_tokens + len(self.context_ids)


@dataclass(frozen=True)
class ConversationPieces:
    """A multi-turn conversation with one image: ``turns`` = ((prompt ids, answer ids), ...).

    Every answer is supervised (LLaVA ``preprocess_v1`` masks only the human parts). The text reads
    ``{SYSTEM} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...``; with one
    turn the ids equal :class:`PromptPieces`' (tested).
    """

    prefix_ids: tuple[int, ...]
    num_image_tokens: int
    turns: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]

    def input_ids(self, image_token_id: int) -> list[int]:
        ids = [*self.prefix_ids, *[image_token_id] * self.num_image_tokens]
        for prompt, answer in self.turns:
            ids += [*prompt, *answer]
        return ids

    def labels(self, image_token_id: int, ignore_index: int = -100) -> list[int]:
        labels = [ignore_index] * (len(self.prefix_ids) + self.num_image_tokens)
        for prompt, answer in self.turns:
            labels += [ignore_index] * len(prompt) + list(answer)
        return labels

    @property
    def prompt_length(self) -> int:
        return len(self.prefix_ids) + self.num_image_tokens + len(self.turns[0][0])


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, turns: Sequence[tuple[str, str]], num_image_tokens: int
) -> ConversationPieces:
    """Token pieces of a conversation; the first question follows the image, later ones a ``</s>``.

    Later turns are tokenised as their own chunk (``"USER: {q} ASSISTANT:"``), the way the image
    chunks are: a deviation from upstream, which tokenises the whole multi-turn string at once.
    """
    pieces = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            prompt = encode_context(tokenizer, question)
        else:
            text = f"{ROLES[0]}: {question}{SEP}{ROLES[1]}:"
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces.append((tuple(prompt), tuple(encode_answer(tokenizer, answer))))
    return ConversationPieces(tuple(encode_prefix(tokenizer)), num_image_tokens, tuple(pieces))


def system_text(template: str = TRAINING_TEMPLATE) -> str:
    """The system text of ``template`` (``vicuna_v1`` or ``llava_v1``)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r} (valid: {', '.join(TEMPLATES)})")
    return TEMPLATES[template]


def format_prompt(
    question: str,
    answer: str | None = None,
    image_token: str = IMAGE_TOKEN,
    template: str = TRAINING_TEMPLATE,
) -> str:
    """The conversation string; ends with ``"ASSISTANT:"`` when ``answer`` is None."""
    text = f"{system_text(template)}{SEP}{ROLES[0]}: {image_token}\n{question}{SEP}{ROLES[1]}:"
    if answer is None:
        return text
    return f"{text} {answer}{SEP2}"


def encode_prefix(tokenizer: PreTrainedTokenizerBase, template: str = TRAINING_TEMPLATE) -> list[int]:
    """BOS + system prompt + ``" USER: "``: the part shared by every condition."""
    ids = tokenizer(f"{system_text(template)}{SEP}{ROLES[0]}: ", add_special_tokens=False)["input_ids"]
    return _with_bos(tokenizer, ids)


def encode_context(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """``"\\n{question} ASSISTANT:"``: the text between the image and the answer."""
    return tokenizer(f"\n{question}{SEP}{ROLES[1]}:", add_special_tokens=False)["input_ids"]


def training_question(question: str) -> str:
    """The question as upstream training templates it: stripped of outer whitespace.

    Upstream ``llava/train/train.py`` builds ``"<image>\\n" + question`` and ``preprocess_multimodal``
    then does ``value.replace(DEFAULT_IMAGE_TOKEN, '').strip()`` and puts ``"<image>\\n"`` back in
    front, so a question's leading/trailing spaces and newlines never reach the model. Upstream
    inference (``mcmdpo_inference.py``) does not strip; generation uses the question as it is.
    """
    return question.strip()


def encode_training_context(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """:func:`encode_context` of the stripped question (training and reference log-probs)."""
    return encode_context(tokenizer, training_question(question))


def encode_answer(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """Answer tokens as they appear after ``"ASSISTANT:"``, followed by EOS (``sep2``)."""
    head = tokenizer(_ANSWER_ANCHOR, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{_ANSWER_ANCHOR} {answer}", add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head:
        ids = full[len(head) :]
    else:  # a merge across the boundary: fall back to the answer on its own
        ids = tokenizer(f" {answer}", add_special_tokens=False)["input_ids"]
    return [*ids, _require_id(tokenizer, "eos_token_id")]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str | None,
    num_image_tokens: int,
    template: str = TRAINING_TEMPLATE,
) -> PromptPieces:
    """Token pieces of one conversation; ``answer=None`` gives a generation prompt."""
    return PromptPieces(
        prefix_ids=tuple(encode_prefix(tokenizer, template)),
        num_image_tokens=num_image_tokens,
        context_ids=tuple(encode_context(tokenizer, question)),
        answer_ids=tuple(encode_answer(tokenizer, answer)) if answer is not None else (),
    )


def _with_bos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    bos = _require_id(tokenizer, "bos_token_id")
    return ids if ids[:1] == [bos] else [bos, *ids]


def _require_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    value = getattr(tokenizer, name)
    if value is None:
        raise ValueError(f"tokenizer has no {name}; the LLaVA v1 templates need BOS and EOS")
    return int(value)
