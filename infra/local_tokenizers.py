"""Tokenizers built on this machine, for the toy world's words: tests and benchmarks need a processor
for random-weight transformers models, and nothing may be downloaded from a hub.

``size`` pads the vocabulary with filler tokens so that a real architecture's embedding table and
special-token ids (BLIP's ``[DEC]`` at 30522, CLIP's end-of-text at 49407) line up.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers as T

from infra.toyworld import COLOURS, COUNT_WORDS, SHAPES

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [*COLOURS, *SHAPES, *COUNT_WORDS, "a", "an", "what", "colour", "is", "the", "shape", "object", "how", "many"]
WORDS += ["objects", "are", "there", "and", "yes", "no", "photo", "of", "?", ","]


def bert_tokenizer(folder: Path, size: int | None = None, dec_id: int | None = None) -> T.BertTokenizer:
    """A WordPiece tokenizer over the toy words; ``[DEC]`` (BLIP's decoder start) at ``dec_id`` or right after them."""
    tokens = BERT_SPECIAL + WORDS
    total = max(size or 0, len(tokens) + 1)
    dec = dec_id if dec_id is not None else len(tokens)
    tokens += [f"[unused{i}]" for i in range(total - len(tokens))]
    tokens[dec] = "[DEC]"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return T.BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")


def clip_tokenizer(folder: Path, size: int | None = None, max_length: int = 16) -> T.CLIPTokenizer:
    """A byte-pair vocabulary holding the toy words, merged letter by letter; start/end of text last."""
    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for char in sorted({c for w in WORDS for c in w}):
        add(char)
        add(char + "</w>")
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            add(parts[0])
    filler = 0
    while size is not None and len(vocab) < size - 2:
        add(f"<|filler{filler}|>")
        filler += 1
    add("<|startoftext|>")
    add("<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return T.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=max_length
    )
