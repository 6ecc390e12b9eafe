"""A valid CLIP BPE tokenizer built offline.

Real CLIP vocabularies come from the hub; we cannot download one, so we write the byte-level base of
CLIP's vocabulary (every byte, with and without the end-of-word marker, plus the two specials) and a
handful of merges. CLIPTokenizer loads it like the real thing and tokenises any text.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# A few common merges so that ordinary words are not all single bytes.
_MERGES = ["t h", "th e</w>", "a n", "i n", "o n</w>", "e r", "r e", "o r", "a r", "e n", "a t"]


def _bytes_to_unicode() -> list[str]:
    """CLIP's (and GPT-2's) reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def vocab() -> dict[str, int]:
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_clip_tokenizer(folder: Path, model_max_length: int = 77) -> dict[str, int]:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    v = vocab()
    (folder / "vocab.json").write_text(json.dumps(v, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
        "errors": "replace",
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return v


# ---- T5 (SentencePiece unigram) ------------------------------------------------------------------

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
_T5_WORDS = ("the", "a", "of", "and", "in", "on", "at", "fox", "red", "cat", "city", "night")


def _t5_pieces() -> list[tuple[str, float]]:
    """A unigram vocabulary: the specials T5 expects at ids 0-2, every printable ASCII character
    (so any ASCII text tokenises without <unk>), word-initial letters and a few whole words."""
    import string

    pieces = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -2.5) for c in string.ascii_lowercase]
    pieces += [("▁" + w, -1.0) for w in _T5_WORDS]
    return pieces


def t5_vocab_size() -> int:
    return len(_t5_pieces())


def write_t5_tokenizer(folder: Path, model_max_length: int = 512) -> int:
    """A T5 tokenizer as `tokenizer.json` (the fast format transformers reads) plus its configs.

    Real T5 tokenizers are SentencePiece unigram models; the `tokenizers` library builds one with the
    same pre-tokenizer (Metaspace) and post-processor (`</s>` appended), offline. Returns the vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = _t5_pieces()
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, 1)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n")
    specials = {"pad_token": T5_PAD, "eos_token": T5_EOS, "unk_token": T5_UNK}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n")
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": model_max_length,
        "extra_ids": 0,
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return len(pieces)
