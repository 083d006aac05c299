"""A small raw curation set made with PIL, and an OpenAI-compatible server with deterministic rules.

The raw set (:func:`make_raw`) has 14 good records and one record for every filter and bad-record
case; ``EXPECTED`` lists, independently of the code under test, what each step must drop. Record ids
are chosen with the split rule documented in :mod:`mcmdpo.curate.pipeline` (sha256 of salt + "\\0" +
the JSON id, as a fraction of 2**64) recomputed here with hashlib, so that the five records with a
behaviour keyword land in ``preference`` and the rest where ``SPLITS`` says.

Server rules (:class:`CurationRules`), by keyword in the chosen alt-text of a preference record:
zebra (kept at attempt 1), yak (generation 1 repeats the chosen text, kept at 2), xerus (a judge with
position bias: always "A", so every swapped check fails: dropped after 3), walrus (generation 1
loses the first order, kept at 2), vole (unparseable verdict at 1, kept at 2). "heron" in a prompt:
its first request gets a 429; "otter": its first request is answered too late (a client timeout).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.helpers.judge import completion

SERVED = "curator-2025-01"
SALT = ""
FRACTIONS = (0.5, 0.3, 0.2)  # sft, preference, test (the recipes below)
KEYWORDS = ("zebra", "yak", "xerus", "walrus", "vole")

CONTEXTS = [
    "I visited the old harbour with my brother and we watched the fishing boats all afternoon.",
    "Look what Alice Smith made for the bake sale this weekend, everyone loved it.",
    "Alice Smith finally finished painting the garden fence after three long days.",
    "Our kitchen renovation is done and the new tiles look even better than we hoped.",
    "The heron came back to the pond this morning and stood there for an hour.",
    "My cat discovered the nature documentary and has been staring at the screen since.",
    "Spring has arrived in the mountains, an otter swims in the lake and the meadows bloom.",
    "We tried a new recipe for vegetable soup and it turned out surprisingly good.",
    "The library downtown reopened with a reading room that overlooks the river.",
    "Training for the marathon is going well, I ran twenty kilometres on Sunday.",
    "Grandpa restored his vintage bicycle and rode it around the village square.",
    "The museum opened an exhibition about ancient maps and navigation tools.",
    "First snow of the winter and the children built a huge snowman in the yard.",
    "Our team won the local football tournament after a dramatic penalty shootout.",
]
ALTS = [
    "A small zebra toy standing on a wooden table next to a cup",
    "A tray of cupcakes with yak shaped sugar decorations on a counter",
    "A white xerus figurine placed beside a freshly painted garden fence",
    "Gray walrus tiles arranged in a pattern on a kitchen wall",
    "A heron standing in shallow water near reeds at the pond edge",
    "A vole shaped cushion on a sofa facing a television screen",
    "Yellow flowers covering a green meadow below snowy mountain peaks",
    "A bowl of teh vegetable soup with bread on a wooden board",
    "A bright reading room with tall windows looking over a river",
    "A runner in a blue shirt crossing a finish line on a sunny road",
    "An old man riding a restored green bicycle across a village square",
    "Old paper maps and brass navigation tools in a glass museum case",
    "Two children standing next to a large snowman in a snowy yard",
    "Football players celebrating together on a grass pitch after a match",
]
# the split each good record must land in: keyword records -> preference
SPLITS = [
    "preference",  # zebra
    "preference",  # yak
    "preference",  # xerus
    "preference",  # walrus
    "sft",  # heron
    "preference",  # vole
    "sft",
    "sft",
    "test",
    "sft",
    "test",
    "sft",
    "sft",
    "sft",
]
EXPECTED_STEPS = {
    "bad_record": 2,
    "hashtag": 1,
    "min_words": 1,
    "language": 1,
    "bad_image": 3,
    "non_static": 3,
    "duplicate_id": 1,
    "duplicate_image": 1,
    "duplicate_text": 1,
    "dropped_after_max_attempts": 1,
}
EXPECTED_REJECTED = {
    "records": 5,
    "generated": 1 + 2 + 3 + 2 + 2,
    "verification_attempts": 10 - 1,  # every generation but yak's copy of the chosen text was judged
    "verification_requests": 2 + 2 + 6 + 3 + 3,
    "outcomes": {"kept": 4, "lost": 4, "unparsed": 1, "identical": 1, "empty": 0},
    "kept_at_attempt": {"1": 1, "2": 3},
    "dropped_after_max_attempts": 1,
}


def split_by_hash(record_id: Any, salt: str = SALT, fractions: tuple[float, ...] = FRACTIONS) -> str:
    """The documented split rule, recomputed independently of mcmdpo."""
    digest = hashlib.sha256(f"{salt}\0{json.dumps(record_id, sort_keys=True)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "sft"
    return "preference" if u < fractions[0] + fractions[1] else "test"


def id_for(index: int, split: str) -> str:
    n = 0
    while split_by_hash(f"r{index}-{n}") != split:
        n += 1
    return f"r{index}-{n}"


def pattern(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST)


def _animated(path: Path, fmt: str) -> None:
    frames = [pattern(300), pattern(301)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_raw(folder: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """(raw JSONL file, images folder, the good records as written)."""
    images = folder / "images"
    images.mkdir(parents=True)
    lines: list[str] = []
    good = []
    for i, (context, alt) in enumerate(zip(CONTEXTS, ALTS, strict=True)):
        pattern(i).save(images / f"{i}.png")
        record = {"id": id_for(i, SPLITS[i]), "image": f"{i}.png", "context": context, "alt_text": alt}
        good.append(record)
        lines.append(json.dumps(record))

    def add(name: str, context: str, alt: str, image: Image.Image | None = None, fmt: str = "PNG") -> None:
        if image is not None:
            image.save(images / name, format=fmt)
        lines.append(
            json.dumps({"id": f"x-{len(lines)}", "image": name, "context": context, "alt_text": alt})
        )

    add("h.png", CONTEXTS[0] + " Again.", "A sunny beach with palm trees and #summer vibes", pattern(200))
    add("s.png", "A short one about the kitchen table today.", "Red bowl on table", pattern(201))
    add(
        "de.png",
        "Wir sind heute mit dem Fahrrad zum See gefahren.",
        "Ein kleines Zebra steht auf einem Tisch",
        pattern(202),
    )
    for fmt, name in (("GIF", "a.gif"), ("PNG", "a.png"), ("WEBP", "a.webp")):
        _animated(images / name, fmt)
        add(
            name,
            f"An animation we made this week, saved as {fmt} for everyone.",
            f"Two coloured squares blinking, a {fmt} clip",
        )
    pattern(203).save(images / "t.jpg", format="JPEG")
    data = (images / "t.jpg").read_bytes()
    (images / "t.jpg").write_bytes(data[: len(data) // 2])
    add(
        "t.jpg",
        "A truncated photo from the camera roll of my old phone.",
        "Half of a photo that never finished saving",
    )
    add(
        "nope.png",
        "A photo that was deleted from the server long ago.",
        "A missing picture of a quiet street at night",
    )
    add(
        "../outside.png",
        "A path that tries to leave the image folder entirely.",
        "A picture stored somewhere it should not be",
    )
    lines.append('{"id": "broken", "context": ')
    lines.append(json.dumps({"id": "no-alt", "image": "0.png", "context": "A record without any alt-text."}))
    lines.append(
        json.dumps(
            {
                "id": good[0]["id"],
                "image": "dup-id.png",
                "context": "Another post reusing an id.",
                "alt_text": "A blue kettle on a stove in a bright kitchen",
            }
        )
    )
    pattern(100).save(images / "dup-id.png")
    bright = np.clip(np.asarray(pattern(6), dtype=np.int16) + 8, 0, 255).astype(np.uint8)
    Image.fromarray(bright).save(images / "near6.png")
    add_json = {
        "id": "near-image",
        "image": "near6.png",
        "context": "A completely new post about city traffic at rush hour.",
        "alt_text": "Cars waiting at a red light on a busy city street",
    }
    lines.append(json.dumps(add_json))
    pattern(101).save(images / "near7.png")
    lines.append(
        json.dumps(
            {
                "id": "near-text",
                "image": "near7.png",
                "context": CONTEXTS[7].replace("good.", "good!!"),  # a re-post of record 7: near-identical
                "alt_text": ALTS[7] + ".",  # post text and alt-text (the default text_on compares both)
            }
        )
    )
    raw = folder / "raw.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    return raw, images, good


# ---------------------------------------------------------------- server rules


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class CurationRules:
    """``behave(body, attempt)`` for :class:`tests.helpers.judge.JudgeServer`; counts answered requests.

    ``answered`` counts the requests that got a prompt, usable 200 reply, per prompt. With ``gate``
    set, the request that would be answer number ``gate`` and every later one block until
    :meth:`release` (they are never counted: their client is killed meanwhile).
    """

    def __init__(self) -> None:
        self.answered: Counter[str] = Counter()
        self.generations: Counter[str] = Counter()
        self.gate: int | None = None
        self.gate_hit = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()

    def release(self) -> None:
        self.gate = None
        self._release.set()

    def __call__(self, body: dict[str, Any], attempt: int) -> tuple[int, dict[str, str], Any, float]:
        text = body["messages"][0]["content"]
        with self._lock:
            if self.gate is not None and sum(self.answered.values()) >= self.gate:
                self.gate_hit.set()
                gated = True
            else:
                gated = False
        if gated:
            self._release.wait(120)
            return 200, {}, completion("gated", SERVED), 0
        if "heron" in text and attempt == 1:
            return 429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}, 0
        if "otter" in text and attempt == 1:
            return 200, {}, completion("too late", SERVED), 2.5
        with self._lock:
            content = self.answer(text)
            self.answered[text] += 1
        return 200, {}, completion(content, SERVED), 0

    def answer(self, text: str) -> str:
        if text.startswith("List the names of real people"):
            return json.dumps([n for n in ("Alice Smith",) if n in text])
        if text.startswith("Your task is to check the given text for grammatical errors"):
            checked = _between(text, "following text?\n", "\nPlease generate")
            return f'True\n"{checked.replace("teh", "the")}"' if "teh" in checked else "False"
        if text.endswith("Suboptimal alt-text:"):
            return self.generate(text)
        if "\nAlt-text A: " in text:
            return self.judge(text)
        raise AssertionError(f"unexpected prompt: {text[:80]!r}")

    def generate(self, text: str) -> str:
        chosen = _between(text, "Best alt-text:\n", "\nSuboptimal alt-text:")
        self.generations[text] += 1
        n = self.generations[text]
        if "yak" in chosen and n == 1:
            return f'"{chosen}"'  # the generator returns the chosen text
        return f"suboptimal take {n}: a photo of something"

    @staticmethod
    def judge(text: str) -> str:
        a = _between(text, "\nAlt-text A: ", "\n")
        b = _between(text, "\nAlt-text B: ", "\n")
        chosen_letter = "B" if "suboptimal take" in a else "A"
        chosen, rejected = (b, a) if chosen_letter == "B" else (a, b)
        take = int(re.search(r"suboptimal take (\d+)", rejected).group(1))
        if "xerus" in chosen:
            return "A"  # position bias
        if "walrus" in chosen and take == 1:
            return "Answer: " + ("A" if chosen_letter == "B" else "B")
        if "vole" in chosen and take == 1:
            return "Both are equally good."
        return f"Alt-text {chosen_letter} is better."
