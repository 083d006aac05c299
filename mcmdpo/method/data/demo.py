"""A small synthetic alt-text preference dataset in the upstream format, with real image files.

Each image is a procedurally drawn scene: a background colour, one to three groups of identical
shapes (shape, colour, count) and, in about half of the scenes, a word printed on it. Each sample's
context (the "post" after the instruction) asks about one aspect of the scene -- how many, which
colour, what the sign says, or the scene in general -- and the chosen alt-text answers that aspect
first and correctly. So the chosen text depends on both the image and the context, and the same
image appears with different contexts. The rejected alt-text is plausibly worse, one of:

- ``miscount``: right shapes and colours, wrong counts;
- ``wrong_colour``: a group's colour swapped for another;
- ``vague``: a generic description that names nothing specific;
- ``off_context``: correct, but silent on what the context asks about (e.g. leaves out the sign);
- ``hallucinated``: adds a group of shapes that is not in the image.

Files (the upstream layout): ``train.json`` (a JSON list; half of the records carry the texts at
the top level, half only in a ``text`` JSON string, like the Twitter files), ``test.jsonl`` (one record
per line with ``image_path``, ``question``, ``chosen``, ``idx``), and ``images/{train,test}/*.jpg|png``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

INSTRUCTION = "Given an image and context, generate alt-text for the image."

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 90, 200),
    "green": (44, 160, 44),
    "yellow": (240, 200, 30),
    "purple": (148, 83, 189),
    "orange": (255, 127, 14),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "grey": (128, 128, 128),
    "beige": (235, 220, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
WORDS = ("SALE", "OPEN", "HELLO", "PARTY", "CAFE", "2025", "CATS", "STOP")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ASPECTS = ("count", "colour", "text", "general")
REJECTION_KINDS = ("miscount", "wrong_colour", "vague", "off_context", "hallucinated")

POSTS: dict[str, tuple[str, ...]] = {
    "count": (
        "Counting practice for the kids today: how many {shape}s can you find?",
        "Quick quiz for my followers, count the {shape}s!",
        "I keep adding {shape}s to this poster. Did I overdo it?",
    ),
    "colour": (
        "Anything {colour} makes me happy. Here is today's sketch.",
        "Colour study: I wanted the {colour} to really pop.",
        "Trying a new palette, {colour} is my favourite.",
    ),
    "text": (
        "Our new sign is finally up!",
        "Printed a little banner for the shop window.",
        "Made a poster with a single word on it, thoughts?",
    ),
    "general": (
        "Playing with simple shapes this morning.",
        "Minimalist art for the living room.",
        "Another abstract piece for my collection.",
    ),
}


@dataclass(frozen=True)
class Group:
    shape: str
    colour: str
    count: int

    def phrase(self, count: int | None = None, colour: str | None = None) -> str:
        n = self.count if count is None else count
        noun = self.shape + ("s" if n != 1 else "")
        return f"{NUMBERS[n] if n < len(NUMBERS) else n} {colour or self.colour} {noun}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    groups: tuple[Group, ...]
    word: str | None
    word_colour: str | None


# ---------------------------------------------------------------- scenes


def random_scene(rng: random.Random, min_size: int = 256, max_size: int = 512) -> Scene:
    width = rng.randrange(min_size, max_size + 1, 8)
    height = rng.randrange(min_size, max_size + 1, 8)
    background = rng.choice(list(BACKGROUNDS))
    shapes = rng.sample(SHAPES, rng.randint(1, 3))
    colours = rng.sample(list(COLOURS), len(shapes))
    groups = tuple(Group(s, c, rng.randint(1, 4)) for s, c in zip(shapes, colours, strict=True))
    word = rng.choice(WORDS) if rng.random() < 0.5 else None
    word_colour = rng.choice([c for c in COLOURS if c not in colours] or list(COLOURS)) if word else None
    return Scene(width, height, background, groups, word, word_colour)


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """Render ``scene`` as a PIL RGB image (objects on a jittered grid, word in the top band)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    top = scene.height // 4 if scene.word else 0
    cells = [(shape, colour) for g in scene.groups for shape, colour in [(g.shape, g.colour)] * g.count]
    cols = math.ceil(math.sqrt(len(cells) * scene.width / max(scene.height - top, 1)))
    rows = math.ceil(len(cells) / cols)
    cw, ch = scene.width / cols, (scene.height - top) / rows
    slots = rng.sample(range(rows * cols), len(cells))
    for (shape, colour), slot in zip(cells, slots, strict=True):
        r = 0.32 * min(cw, ch) * rng.uniform(0.8, 1.0)
        cx = (slot % cols + 0.5) * cw + rng.uniform(-0.1, 0.1) * cw
        cy = top + (slot // cols + 0.5) * ch + rng.uniform(-0.1, 0.1) * ch
        _draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
    if scene.word:
        _draw_word(draw, scene, top)
    return image


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]
) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def _draw_word(draw: ImageDraw.ImageDraw, scene: Scene, band: int) -> None:
    from PIL import ImageFont

    size = max(12, int(min(band * 0.7, scene.width / (0.8 * len(scene.word) + 1))))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    colour = COLOURS[scene.word_colour or "red"]
    draw.text((scene.width / 2, band / 2), scene.word, fill=colour, font=font, anchor="mm")


# ---------------------------------------------------------------- texts


def _list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sign(scene: Scene) -> str:
    return f'the word "{scene.word}" in {scene.word_colour} letters' if scene.word else ""


def describe(scene: Scene, aspect: str, focus: Group) -> str:
    """The chosen alt-text: correct, and leading with what the context asks about."""
    others = [g.phrase() for g in scene.groups if g != focus]
    bg = f"a {scene.background} background"
    sign = f", with {_sign(scene)} across the top" if scene.word else ""
    if aspect == "count":
        rest = f" together with {_list(others)}" if others else ""
        return f"{focus.phrase().capitalize()}{rest} on {bg}{sign}."
    if aspect == "colour":
        rest = f", next to {_list(others)}" if others else ""
        verb = "stands" if focus.count == 1 else "stand"
        return f"{focus.phrase().capitalize()} {verb} out on {bg}{rest}{sign}."
    everything = _list([g.phrase() for g in scene.groups])
    if aspect == "text" and scene.word:
        return f'A sign reading "{scene.word}" in {scene.word_colour} letters above {everything} on {bg}.'
    return f"{everything.capitalize()} arranged on {bg}{sign}."


def degrade(scene: Scene, aspect: str, focus: Group, kind: str, rng: random.Random) -> str:
    """A plausibly worse alt-text of the given ``kind`` (see the module docstring)."""
    at = scene.groups.index(focus)
    if kind == "miscount":
        groups = tuple(_miscount(g, rng) for g in scene.groups)
        return describe(replace(scene, groups=groups), aspect, groups[at])
    if kind == "wrong_colour":
        other = rng.choice([c for c in COLOURS if c != focus.colour])
        groups = tuple(replace(g, colour=other) if g == focus else g for g in scene.groups)
        return describe(replace(scene, groups=groups), aspect, groups[at])
    if kind == "vague":
        return rng.choice(
            ("An image with some shapes.", "A colourful picture.", "Some objects on a background.")
        )
    if kind == "off_context":
        if aspect == "text" and scene.word:
            everything = _list([g.phrase() for g in scene.groups])
            return f"{everything.capitalize()} on a {scene.background} background."
        shapes = _list(sorted({g.shape + "s" for g in scene.groups}))
        return f"Some {shapes} on a {scene.background} background."
    extra_shape = rng.choice([s for s in SHAPES if s not in {g.shape for g in scene.groups}] or list(SHAPES))
    extra = Group(extra_shape, rng.choice(list(COLOURS)), rng.randint(1, 3))
    return describe(replace(scene, groups=(*scene.groups, extra)), aspect, focus)


def _miscount(group: Group, rng: random.Random) -> Group:
    delta = rng.choice((-1, 1)) if group.count > 1 else 1
    return Group(group.shape, group.colour, group.count + delta)


def context_for(scene: Scene, rng: random.Random) -> tuple[str, str, Group]:
    """(aspect, post text, focus group) for one sample of ``scene``."""
    aspects = [a for a in ASPECTS if a != "text" or scene.word]
    aspect = rng.choice(aspects)
    focus = rng.choice(scene.groups)
    post = rng.choice(POSTS[aspect]).format(shape=focus.shape, colour=focus.colour)
    return aspect, post, focus


def question_for(post: str, rng: random.Random) -> str:
    """The upstream question: instruction + context (the newline before "Context:" varies)."""
    sep = "\n" if rng.random() < 0.8 else ""
    return f"{INSTRUCTION}{sep}Context:\n{post}"


# ---------------------------------------------------------------- files


def make_demo_dataset(
    out: Path,
    num_train: int = 64,
    num_test: int = 16,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 512,
    png_every: int = 5,
) -> dict[str, Any]:
    """Write the demo dataset under ``out``; return a summary (paths relative to ``out``)."""
    out = Path(out)
    rng = random.Random(seed)
    train = [_sample(out, "train", i, 1000 + i, rng, min_size, max_size, png_every) for i in range(num_train)]
    test = [_sample(out, "test", i, 5000 + i, rng, min_size, max_size, png_every) for i in range(num_test)]
    train_records = [_train_record(s, i) for i, s in enumerate(train)]
    _write(out / "train.json", json.dumps(train_records, indent=2, ensure_ascii=False) + "\n")
    lines = [json.dumps(_test_record(s), ensure_ascii=False) for s in test]
    _write(out / "test.jsonl", "\n".join(lines) + "\n")
    return {
        "train": {"file": "train.json", "images": "images/train", "num_records": num_train},
        "test": {"file": "test.jsonl", "images": "images/test", "num_records": num_test},
        "seed": seed,
    }


def _sample(
    out: Path, split: str, i: int, idx: int, rng: random.Random, min_size: int, max_size: int, png_every: int
) -> dict[str, Any]:
    scene = random_scene(rng, min_size, max_size)
    image = draw_scene(scene, rng)
    ext = "png" if png_every and i % png_every == png_every - 1 else "jpg"
    name = f"{split}_{idx:06d}.{ext}"
    path = out / "images" / split / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90) if ext == "jpg" else image.save(path)
    aspect, post, focus = context_for(scene, rng)
    kind = rng.choice(REJECTION_KINDS)
    return {
        "idx": idx,
        "image": name,
        "question": question_for(post, rng),
        "chosen": describe(scene, aspect, focus),
        "rejected": degrade(scene, aspect, focus, kind, rng),
        "aspect": aspect,
        "rejection": kind,
    }


def _train_record(s: dict[str, Any], i: int) -> dict[str, Any]:
    texts = {"question": s["question"], "chosen": s["chosen"], "rejected": s["rejected"]}
    record: dict[str, Any] = {
        "ds_name": "demo_data",
        "image": {"path": s["image"]},
        "origin_dataset": "mcmdpo-demo",
        "origin_split": json.dumps({"aspect": s["aspect"], "rejection": s["rejection"]}),
        "idx": s["idx"],
        "image_path": s["image"],
    }
    if i % 2 == 0:  # Pinterest style: texts at the top level and in `text`
        record.update(texts)
    record["text"] = json.dumps(texts, ensure_ascii=False)
    return record


def _test_record(s: dict[str, Any]) -> dict[str, Any]:
    return {"image_path": s["image"], "question": s["question"], "chosen": s["chosen"], "idx": s["idx"]}


def _write(path: Path, text: str) -> None:
    from mcmdpo.batch.artifacts import write_text_atomic

    write_text_atomic(path, text)
