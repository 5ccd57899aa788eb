from __future__ import annotations

from pipeline.toy.prompts import ToyAttributes, generate_prompts, parse_prompt, render_prompt


def test_generated_prompts_parse_back_to_their_attributes():
    prompts = generate_prompts(3000, seed=1)
    assert all(parse_prompt(p.text) == (p.attributes, []) for p in prompts)


def test_attributes_are_named_about_half_the_time():
    prompts = generate_prompts(4000, seed=2)
    for field in ("size", "color", "shape", "position", "background"):
        named = sum(getattr(p.attributes, field) is not None for p in prompts) / len(prompts)
        assert 0.45 < named < 0.55, field


def test_canonical_grammar():
    import random

    attrs = ToyAttributes("small", "red", "circle", 4, "white")
    text = render_prompt(attrs, 0, random.Random(0))
    assert text in ("a small red circle in the center on a white background",
                    "a small red circle in the middle on a white background",
                    "a little red circle in the center on a white background",
                    "a little red circle in the middle on a white background")
    assert render_prompt(ToyAttributes(), 0, random.Random(0)) == "a shape"


def test_unknown_words_are_reported():
    attrs, unknown = parse_prompt("a purple dragon on a white background")
    assert attrs.background == "white" and unknown == ["purple", "dragon"]
