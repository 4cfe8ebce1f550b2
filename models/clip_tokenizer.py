"""CLIP's BPE tokenizer built offline from the merges file open-clip-torch ships (no hub, same ids as SD's)."""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

#: Vocabulary size of the CLIP text encoders used by Stable Diffusion 1.x/2.x.
CLIP_VOCAB_SIZE = 49408
#: Sequence length of SD's text encoder (start token, 75 tokens, end token).
CLIP_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
#: CLIP keeps the first 49152 - 256 - 2 merges of the file (the first line is a header).
_N_MERGES = 49152 - 256 - 2


def merges_path() -> str:
    """Return the path of bpe_simple_vocab_16e6.txt.gz inside the installed open_clip package."""
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP BPE merges file not found; is open-clip-torch installed?")
    return str(path)


def byte_symbols() -> list[str]:
    """Return CLIP's 256 byte stand-ins in vocabulary order: printable bytes as themselves, then the rest.

    Bytes without a printable glyph map to code points 256, 257, ... in byte order; the vocabulary lists the
    printable bytes first, so id order is not byte order.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return CLIP's (token -> id vocabulary of 49408 entries, ordered merge list) read from the merges file."""
    with gzip.open(merges_path(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1 : _N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    bytes_ = byte_symbols()
    tokens = bytes_ + [b + "</w>" for b in bytes_] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{merges_path()}: built a vocabulary of {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def build_clip_tokenizer(pad_token: str = END_TOKEN):
    """Return a transformers CLIPTokenizer equal to SD's (pad = end token as in SD 1.x; SD 2.x pads with '!')."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=CLIP_MAX_LENGTH)
