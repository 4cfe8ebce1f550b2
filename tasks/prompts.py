"""Prompt words: the word written for a class, and the token a shot's learned embedding is loaded under."""

from __future__ import annotations


def class_word(class_name: str) -> str:
    """Return the word written in prompts for a class name (underscores, as in FSS-1000 names, become spaces)."""
    return class_name.replace("_", " ").strip()


def embedding_token(shot_index: int) -> str:
    """Return the token a class's k-th shot embedding is loaded under ("<v_0>", "<v_1>", ...)."""
    return f"<v_{shot_index}>"
