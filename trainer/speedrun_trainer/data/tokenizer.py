"""Tokenizers, each knowing how many UTF-8 bytes every token stands for (the BPB denominator).

`load_tokenizer(spec)` takes `spec.data.tokenizer`:
- `byte`: UTF-8 bytes 0..255, plus the document separator 256 (vocab 257).
- `gpt2`: tiktoken's GPT-2 BPE (vocab 50257, separator `<|endoftext|>` = 50256). tiktoken
  downloads its BPE file on first use; without network, point TIKTOKEN_CACHE_DIR at a cache
  that holds it.
- anything else: the URI (file://, path, s3://, https://) of a Hugging Face `tokenizers` JSON.
  Its separator is `<|endoftext|>`, else `<|bos|>` (nanochat), else the lowest-id special token.

`token_bytes()` is exact for `byte`, `gpt2` and byte-level BPE JSON tokenizers (GPT-2 style
ByteLevel alphabet mapped back to bytes); special tokens count 0 bytes. For other JSON
tokenizers it is the UTF-8 length of the token's text (`▁` counts as a space, `<0xNN>` byte
fallback tokens as one byte): an approximation, since their decoders may add or drop spaces.
`encode` treats text literally where the library allows (tiktoken's `encode_ordinary`); a JSON
tokenizer still turns special-token strings found in the text into special tokens.

`levanter_document(text)` tokenizes one document as levanter's `BatchTokenizer` does for Marin's
caches (stanford-crfm/levanter src/levanter/data/text.py at 9263f81, `enforce_bos`/`enforce_eos`):
when the tokenizer does not add BOS itself the text becomes `bos + " " + text`, when it does not
end with EOS `text + " " + eos`, and the string is encoded with the tokenizer's own special tokens
(Llama 3: `<|begin_of_text|>` added by its post-processor, then `... <|end_of_text|>` with the
space before EOS its own token). JSON tokenizers only, whose BOS/EOS are Llama 3's or `<s>`/`</s>`
(HF reads their names from tokenizer_config.json, which a tokenizers JSON lacks), and without a
Replace/Sequence normalizer (levanter then splits documents over 10,000 characters first).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from typing import Any

import numpy as np

from speedrun_trainer.data.storage import DataError, fetch_uri

BYTE_EOT = 256
SEPARATOR_CANDIDATES = ("<|endoftext|>", "<|bos|>")
LEVANTER_BOS_EOS = (("<|begin_of_text|>", "<|end_of_text|>"), ("<s>", "</s>"))  # Llama 3, Llama 2


class TokenizerError(DataError):
    """A tokenizer that cannot be loaded or used; one line naming the spec."""


class Tokenizer:
    """The interface every tokenizer offers: ids <-> text and the byte length of each id."""

    name: str  # stable and unique per vocabulary: caches of tokenized data are keyed by it
    spec: str  # what the user wrote
    vocab_size: int
    eot_id: int  # the document separator, written before every document

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _token_bytes(self) -> np.ndarray:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as an int64 array."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def levanter_document(self, text: str) -> np.ndarray:
        """One document as levanter's BatchTokenizer writes it (see the module docstring)."""
        raise TokenizerError(f"{self.spec}: levanter-style documents need a tokenizers JSON with BOS and EOS")

    def document_end_id(self) -> int:
        """The token that ends a document for the document mask (`model.documentMask`): levanter
        starts a new segment after each EOS (train/attention.py); without a levanter EOS, the
        document separator (GPT-2's `<|endoftext|>` is also levanter's EOS for GPT-2 data)."""
        return self.eot_id

    def token_bytes(self) -> np.ndarray:
        """int64[vocab_size]: UTF-8 bytes each token stands for; 0 for special tokens (a fresh copy)."""
        if getattr(self, "_token_bytes_cache", None) is None:
            self._token_bytes_cache = self._token_bytes()
        return self._token_bytes_cache.copy()

    def levanter_special_ids(self) -> set[int]:
        """The ids levanter counts 0 bytes for (its tokenizer's `all_special_ids`); here the separator."""
        return {self.eot_id}

    def token_repr(self, token_id: int) -> str | None:
        """The vocabulary's string for an id (HF `convert_ids_to_tokens`), where there is one."""
        return None

    def levanter_token_bytes(self) -> np.ndarray:
        """int64[vocab_size]: bytes per token as levanter counts them for its BPB (levanter
        utils/hf_utils.py `byte_length_of_token`): 0 for `levanter_special_ids`, the hex bytes of a
        `<0xNN>` token, else `len(decode([".", id]).encode("utf-8")) - 1`; a token that is not whole
        UTF-8 decodes to U+FFFD (3 bytes per invalid run), unlike `token_bytes`'s exact count."""
        if getattr(self, "_levanter_bytes_cache", None) is None:
            dot = self.encode(".")[0]
            special = self.levanter_special_ids()
            out = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if i in special:
                    continue
                if m := _HEX_TOKEN.match(self.token_repr(i) or ""):
                    out[i] = len(bytes.fromhex(m.group(1)))
                    continue
                with contextlib.suppress(KeyError):  # a hole in the vocabulary stays 0
                    out[i] = len(self.decode([dot, i]).encode("utf-8")) - 1
            self._levanter_bytes_cache = out
        return self._levanter_bytes_cache.copy()

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class ByteTokenizer(Tokenizer):
    def __init__(self) -> None:
        self.name = self.spec = "byte"
        self.vocab_size = 257
        self.eot_id = BYTE_EOT

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def _token_bytes(self) -> np.ndarray:
        lengths = np.ones(self.vocab_size, dtype=np.int64)
        lengths[self.eot_id] = 0
        return lengths


class TiktokenTokenizer(Tokenizer):
    def __init__(self, encoding: str) -> None:
        try:
            import tiktoken

            self.enc = tiktoken.get_encoding(encoding)
        except Exception as e:  # tiktoken raises requests/OSError/ValueError variants
            detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise TokenizerError(
                f"{encoding}: tiktoken could not load its BPE file ({detail}); it downloads it from"
                " openaipublic.blob.core.windows.net on first use — without network, set"
                " TIKTOKEN_CACHE_DIR to a directory holding the cached file",
                transient=True,  # a download that failed: the network may come back
            ) from None
        self.name = self.spec = encoding
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(list(ids))

    def _token_bytes(self) -> np.ndarray:
        special = {self.enc.encode_single_token(s) for s in self.enc.special_tokens_set}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if i not in special:
                with contextlib.suppress(KeyError):  # a hole in the vocabulary stays 0
                    lengths[i] = len(self.enc.decode_single_token_bytes(i))
        return lengths


@functools.lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's ByteLevel map, reversed: printable character -> the byte it stands for.

    Bytes that are visible Latin-1 characters stand for themselves; the other 68 bytes (control
    characters, space, DEL, NBSP, soft hyphen...) take code points 256, 257, ... in byte order.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars = {b: chr(b) for b in visible}
    hidden = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(hidden)})
    return {c: b for b, c in chars.items()}


def _component_types(node: Any) -> set[str]:
    """Types of a pre_tokenizer/decoder, looking inside Sequence components."""
    if not isinstance(node, dict):
        return set()
    types = {str(node.get("type"))}
    for child in node.get("pretokenizers", []) + node.get("decoders", []):
        types |= _component_types(child)
    return types


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>\Z")
_HEX_TOKEN = re.compile(r"<0x([0-9A-Fa-f]+)>")  # levanter hf_utils.py byte_length_of_token's re.match


class JsonTokenizer(Tokenizer):
    def __init__(self, spec: str, endpoint_url: str | None = None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        raw = fetch_uri(spec, endpoint_url)
        try:
            self.tok = HFTokenizer.from_str(raw.decode("utf-8"))
            config = json.loads(raw)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"{spec}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
        self.spec = spec
        self.name = f"json-{hashlib.sha256(raw).hexdigest()[:16]}"
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        added = self.tok.get_added_tokens_decoder()
        self.special = {i for i, t in added.items() if t.special}
        self.added_text = {i: t.content for i, t in added.items() if not t.special}
        self.eot_id = self._separator(spec)
        kinds = _component_types(config.get("decoder")) | _component_types(config.get("pre_tokenizer"))
        self.byte_level = "ByteLevel" in kinds
        self.metaspace = "Metaspace" in kinds
        self.byte_fallback = "ByteFallback" in kinds or bool(config.get("model", {}).get("byte_fallback"))

    def _separator(self, spec: str) -> int:
        for candidate in SEPARATOR_CANDIDATES:
            token_id = self.tok.token_to_id(candidate)
            if token_id is not None:
                return token_id
        if self.special:
            return min(self.special)
        raise TokenizerError(f"{spec}: the tokenizer has no special token to separate documents (add <|endoftext|>)")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def levanter_special_ids(self) -> set[int]:
        """levanter tokenizers.py `_collect_special_ids`: BOS, EOS, PAD and every added token
        marked special (tokenizer_config.json's added_tokens_decoder, which mirrors tokenizer.json's
        added_tokens in hub tokenizers; Llama 3's reserved specials included)."""
        ids = {self.tok.token_to_id(name) for pair in LEVANTER_BOS_EOS for name in pair}
        return set(self.special) | {i for i in ids if i is not None} | {self.eot_id}

    def token_repr(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    @functools.cached_property
    def _levanter_affixes(self) -> tuple[str, str]:
        """(prefix, suffix) levanter's BatchTokenizer adds to every document's text."""
        names = next(
            (
                (b, e)
                for b, e in LEVANTER_BOS_EOS
                if self.tok.token_to_id(b) is not None and self.tok.token_to_id(e) is not None
            ),
            None,
        )
        if names is None:
            raise TokenizerError(
                f"{self.spec}: levanter-style documents need BOS/EOS tokens named "
                + " or ".join(f"{b} and {e}" for b, e in LEVANTER_BOS_EOS)
            )
        if _component_types(json.loads(self.tok.to_str()).get("normalizer")) & {"Replace", "Sequence"}:
            raise TokenizerError(
                f"{self.spec}: its normalizer makes levanter split long documents before"
                " tokenizing, which is not replicated here"
            )
        bos, eos = names
        probe = self.tok.encode("hi there", add_special_tokens=True).ids
        prefix = "" if probe[0] == self.tok.token_to_id(bos) else bos + " "
        suffix = "" if probe[-1] == self.tok.token_to_id(eos) else " " + eos
        return prefix, suffix

    def document_end_id(self) -> int:
        """levanter's EOS (`<|end_of_text|>`, `</s>`) where the tokenizer has it, else the separator."""
        for _, eos in LEVANTER_BOS_EOS:
            token_id = self.tok.token_to_id(eos)
            if token_id is not None:
                return token_id
        return self.eot_id

    def levanter_document(self, text: str) -> np.ndarray:
        prefix, suffix = self._levanter_affixes
        return np.asarray(self.tok.encode(prefix + text + suffix, add_special_tokens=True).ids, dtype=np.int64)

    def _length(self, token: str) -> int:
        if self.byte_level:
            alphabet = byte_level_alphabet()
            if all(c in alphabet for c in token):
                return len(token)  # one alphabet character per byte
        if self.byte_fallback and _BYTE_FALLBACK.match(token):
            return 1
        if self.metaspace:
            token = token.replace("▁", " ")
        return len(token.encode("utf-8"))

    def _token_bytes(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if i in self.special:
                continue
            if i in self.added_text:
                lengths[i] = len(self.added_text[i].encode("utf-8"))
                continue
            token = self.tok.id_to_token(i)
            if token is not None:
                lengths[i] = self._length(token)
        return lengths


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str, endpoint_url: str | None = None) -> Tokenizer:
    """`byte`, `gpt2`, or the URI of a tokenizers JSON file (see the module docstring)."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return TiktokenTokenizer("gpt2")
    if not spec:
        raise TokenizerError("empty tokenizer spec: give byte, gpt2 or the URI of a tokenizer.json")
    return JsonTokenizer(spec, endpoint_url)


def padded_token_bytes(tokenizer: Tokenizer, vocab_size: int, *, levanter: bool = False) -> np.ndarray:
    """UTF-8 bytes per token id for a model whose vocabulary may be padded past the tokenizer's:
    padding ids stand for no bytes. `levanter`: levanter's count (`levanter_token_bytes`)."""
    out = np.zeros(vocab_size, dtype=np.int64)
    out[: tokenizer.vocab_size] = tokenizer.levanter_token_bytes() if levanter else tokenizer.token_bytes()
    return out
