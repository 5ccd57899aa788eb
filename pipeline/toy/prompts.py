"""Toy-world vocabulary, prompt generator and prompt parser (a public interface: keep stable).

A prompt names each of five attributes (size, colour, shape, position, background) or leaves
it out, independently with probability ``p_named`` (0.5 by default); an omitted attribute is
drawn uniformly when rendering, so partly specified prompts are multi-modal. Prompts come
from several templates and synonyms; the canonical grammar is always among them:

    a [{size}] [{color}] {shape} [{where}] [on a {background} background]

``{shape}`` is the word ``shape`` when the shape is left out.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SIZES: tuple[str, ...] = ("small", "large")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
# Position index p = 3 * row + col; centre x, y = 8 + 8 * col, 8 + 8 * row (pixels).
POSITIONS: tuple[str, ...] = (
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
)

SIZE_SYNONYMS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_SYNONYMS = {"black": ("black",), "white": ("white",), "gray": ("gray", "grey")}
POSITION_SYNONYMS: dict[int, tuple[str, ...]] = {
    0: ("in the top left corner", "in the upper left corner"),
    1: ("at the top",),
    2: ("in the top right corner", "in the upper right corner"),
    3: ("on the left",),
    4: ("in the center", "in the middle"),
    5: ("on the right",),
    6: ("in the bottom left corner", "in the lower left corner"),
    7: ("at the bottom",),
    8: ("in the bottom right corner", "in the lower right corner"),
}


@dataclass(frozen=True)
class ToyAttributes:
    """What a prompt names; ``None`` means left out (drawn uniformly when rendering)."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None
    position: int | None = None
    background: str | None = None

    def named(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ToyPrompt:
    text: str
    attributes: ToyAttributes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(size: str | None, color: str | None, shape: str | None) -> str:
    words = [w for w in (size, color, shape or "shape") if w]
    return " ".join(words)


def render_prompt(attrs: ToyAttributes, template: int, rng: random.Random) -> str:
    """Text for ``attrs`` in one of the templates (0 is the canonical grammar)."""
    size = rng.choice(SIZE_SYNONYMS[attrs.size]) if attrs.size else None
    where = rng.choice(POSITION_SYNONYMS[attrs.position]) if attrs.position is not None else None
    bg = rng.choice(BACKGROUND_SYNONYMS[attrs.background]) if attrs.background else None
    noun = _noun_phrase(size, attrs.color, attrs.shape)
    if template == 0 or (template == 3 and bg is None):
        parts = [_article(noun), noun, where, f"on a {bg} background" if bg else None]
    elif template == 1:
        parts = [noun, where]
        text = " ".join(p for p in parts if p)
        return f"{text}, {bg} background" if bg else text
    elif template == 2:
        parts = ["an image of", _article(noun), noun, where,
                 f"on a {bg} background" if bg else None]
    else:  # template 3 with a background
        parts = [f"{_article(bg)} {bg} background with", _article(noun), noun, where]
    return " ".join(p for p in parts if p)


NUM_TEMPLATES = 4


def random_attributes(rng: random.Random, p_named: float = 0.5) -> ToyAttributes:
    return ToyAttributes(
        size=rng.choice(SIZES) if rng.random() < p_named else None,
        color=rng.choice(tuple(COLORS)) if rng.random() < p_named else None,
        shape=rng.choice(SHAPES) if rng.random() < p_named else None,
        position=rng.randrange(len(POSITIONS)) if rng.random() < p_named else None,
        background=rng.choice(tuple(BACKGROUNDS)) if rng.random() < p_named else None,
    )


def generate_prompts(n: int, seed: int = 0, p_named: float = 0.5) -> list[ToyPrompt]:
    """``n`` prompts, deterministic in ``seed``. Duplicates occur (the vocabulary is small):
    curation removes them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        attrs = random_attributes(rng, p_named)
        template = 0 if rng.random() < 0.5 else rng.randrange(1, NUM_TEMPLATES)
        out.append(ToyPrompt(render_prompt(attrs, template, rng), attrs))
    return out


_WORD = re.compile(r"[a-z]+")
_SIZE_WORDS = {syn: size for size, syns in SIZE_SYNONYMS.items() for syn in syns}
_BG_WORDS = {syn: bg for bg, syns in BACKGROUND_SYNONYMS.items() for syn in syns}
_POSITION_PHRASES = sorted(
    ((phrase, p) for p, phrases in POSITION_SYNONYMS.items() for phrase in phrases),
    key=lambda item: -len(item[0]),
)
_FILLER = {"a", "an", "the", "of", "on", "in", "at", "with", "image", "background",
           "shape", "corner", "top", "bottom", "left", "right", "center", "middle", "upper",
           "lower"}


def parse_prompt(text: str) -> tuple[ToyAttributes, list[str]]:
    """Attributes a prompt names, and the words outside the toy vocabulary.

    ``<black|white|gray|grey> background`` names the background; any other colour word names
    the shape's colour (so ``a circle on a red background`` reads as a red circle: red is not a
    background of the toy world). Position phrases are matched whole; a partial phrase such as
    ``at the top left`` is read as ``at the top``.
    """
    lowered = " ".join(_WORD.findall(text.lower()))
    position = None
    for phrase, p in _POSITION_PHRASES:
        if phrase in lowered:
            position = p
            lowered = lowered.replace(phrase, " ")
            break
    background = None
    bg_match = re.search(r"\b([a-z]+) background\b", lowered)
    if bg_match and bg_match.group(1) in _BG_WORDS:
        background = _BG_WORDS[bg_match.group(1)]
        lowered = lowered[: bg_match.start()] + " " + lowered[bg_match.end():]
    size = color = shape = None
    unknown = []
    for word in lowered.split():
        if word in _SIZE_WORDS and size is None:
            size = _SIZE_WORDS[word]
        elif word in COLORS and color is None:
            color = word
        elif word in SHAPES and shape is None:
            shape = word
        elif word not in _FILLER:
            unknown.append(word)
    return ToyAttributes(size, color, shape, position, background), unknown


def words_outside_vocabulary(prompts: list[str]) -> set[str]:
    """Every word of ``prompts`` that the toy world does not know (:func:`parse_prompt`)."""
    return {word for prompt in prompts for word in parse_prompt(prompt)[1]}


def outside_vocabulary_warning(words: set[str], model: str) -> str:
    """The warning for prompts with ``words`` outside the toy vocabulary, which ``model``
    (the teacher, the student) encodes anyway without having seen them in training."""
    return (f"words outside the toy vocabulary: {', '.join(sorted(words))} (they are encoded "
            f"anyway; the {model} never saw them)")
