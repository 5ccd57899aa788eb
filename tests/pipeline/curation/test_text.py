from __future__ import annotations

from pipeline.curation.text import clean_text, match_text, prompt_id, shingles, split_of


def test_clean_text_nfc_controls_and_whitespace():
    assert clean_text("  Cafe\u0301\t\x07 ok\u200b\n") == "Caf\u00e9 ok"
    assert clean_text("a\u00a0b\u2028c") == "a b c"
    assert clean_text("\x00\x01") == ""


def test_match_text_drops_case_and_punctuation():
    assert match_text("A red circle.") == match_text("a red circle") == "a red circle"
    assert match_text("top-left!!") == "top left"


def test_shingles_short_texts_are_one_shingle():
    assert shingles("abc", "char", 5) == {b"abc"}
    assert shingles("abcdef", "char", 5) == {b"abcde", b"bcdef"}
    assert shingles("a b", "word", 3) == {b"a b"}
    assert shingles("", "char", 5) == set()


def test_ids_and_split_are_stable_and_balanced():
    assert prompt_id("a red circle") == prompt_id("a red circle")
    assert len(prompt_id("x")) == 16
    splits = [split_of(prompt_id(str(i)), 0.2, 0) for i in range(5000)]
    assert 0.17 < splits.count("eval") / 5000 < 0.23
    assert splits == [split_of(prompt_id(str(i)), 0.2, 0) for i in range(5000)]
    assert splits != [split_of(prompt_id(str(i)), 0.2, 1) for i in range(5000)]
