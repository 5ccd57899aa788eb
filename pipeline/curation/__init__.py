"""Prompt curation building blocks: source readers, text normalization, MinHash dedupe, split."""
