"""The offline CLIP tokenizer: same vocabulary and ids as CLIP's reference BPE rules, and it survives save/load."""

import pytest
from open_clip.tokenizer import SimpleTokenizer

from maskforge.models.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer, byte_symbols, clip_vocab_and_merges

PROMPTS = [
    "a photo of a red disc",
    "a photo of a <v_3> dining table",
    "A real shot photo of potted plant, best quality, extremely detailed",
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit",
    "naïve café: 3 x-rays of the T-Rex!!",
    "emoji 😀 and  multiple   spaces",
    "bald_eagle",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_vocabulary_matches_clip(tokenizer):
    vocab, merges = clip_vocab_and_merges()
    reference = SimpleTokenizer()
    assert len(vocab) == CLIP_VOCAB_SIZE == len(reference.encoder) == len(tokenizer)
    # open_clip names the two special tokens <start_of_text>/<end_of_text>; SD's files use <|startoftext|>/<|endoftext|>
    ordinary = {tok: i for tok, i in reference.encoder.items() if i < CLIP_VOCAB_SIZE - 2}
    assert {tok: i for tok, i in vocab.items() if i < CLIP_VOCAB_SIZE - 2} == ordinary
    assert vocab["<|startoftext|>"] == reference.sot_token_id == 49406
    assert vocab["<|endoftext|>"] == reference.eot_token_id == 49407
    assert len(merges) == 48894 and merges[0] == ("i", "n")
    assert len(set(byte_symbols())) == 256


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_the_reference_bpe(tokenizer, prompt):
    reference = SimpleTokenizer()
    expected = [reference.sot_token_id, *reference.encode(prompt), reference.eot_token_id]
    assert tokenizer(prompt).input_ids == expected


def test_known_ids_and_padding(tokenizer):
    # "a photo of a" is 320 1125 539 320 in SD's tokenizer; start 49406, end and pad 49407
    ids = tokenizer("a photo of a", padding="max_length", max_length=77).input_ids
    assert ids[:6] == [49406, 320, 1125, 539, 320, 49407]
    assert len(ids) == 77 and set(ids[6:]) == {49407}
    assert tokenizer.model_max_length == 77


def test_save_and_reload_keeps_ids(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for prompt in PROMPTS:
        assert again(prompt).input_ids == tokenizer(prompt).input_ids
