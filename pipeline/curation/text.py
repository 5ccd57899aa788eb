"""Text normalization for prompts.

Two forms of a prompt:
- the *clean* text (what is kept and shown): Unicode NFC, control and format characters
  replaced by spaces, whitespace runs collapsed, stripped;
- the *match* text (what near-duplicate detection compares): the clean text lower-cased, with
  punctuation and symbols removed, whitespace collapsed. So ``"A red circle."`` and
  ``"a red circle"`` share one match text.
"""

from __future__ import annotations

import hashlib
import unicodedata

_SPACE_LIKE = {"Cc", "Cf", "Zl", "Zp", "Zs"}
_PUNCT_OR_SYMBOL = ("P", "S")


def clean_text(text: str) -> str:
    """NFC-normalize, replace control/format/separator characters by spaces, collapse runs."""
    text = unicodedata.normalize("NFC", text)
    if text.isascii() and text.isprintable():
        return " ".join(text.split())
    chars = [" " if unicodedata.category(c) in _SPACE_LIKE else c for c in text]
    return " ".join("".join(chars).split())


def match_text(clean: str) -> str:
    """Lower-case and strip punctuation and symbols (Unicode categories P* and S*)."""
    lowered = clean.casefold()
    stripped = "".join(
        " " if unicodedata.category(c).startswith(_PUNCT_OR_SYMBOL) else c for c in lowered
    )
    return " ".join(stripped.split())


def word_count(clean: str) -> int:
    return len(clean.split())


def shingles(text: str, unit: str, size: int) -> set[bytes]:
    """Character or word n-grams of ``text`` as UTF-8 bytes.

    A text shorter than one shingle becomes a single shingle (itself), so very short prompts
    are still compared, by equality of their match text. The empty text has no shingles.
    """
    if not text:
        return set()
    if unit == "word":
        tokens = text.split()
        if len(tokens) <= size:
            return {" ".join(tokens).encode()}
        return {" ".join(tokens[i : i + size]).encode() for i in range(len(tokens) - size + 1)}
    if len(text) <= size:
        return {text.encode()}
    return {text[i : i + size].encode() for i in range(len(text) - size + 1)}


def prompt_id(clean: str) -> str:
    """Stable 16-hex-digit id of a prompt: a hash of its clean text, independent of inputs,
    order and run."""
    return hashlib.blake2b(clean.encode("utf-8"), digest_size=8).hexdigest()


def split_of(pid: str, eval_fraction: float, seed: int) -> str:
    """``"eval"`` or ``"train"``, from a hash of the prompt id salted by ``seed``: the same
    prompt lands in the same split whatever else is curated with it."""
    digest = hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "eval" if u < eval_fraction else "train"
