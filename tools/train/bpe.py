"""Byte-level BPE in pure Python: training, encoding, decoding, Hugging Face tokenizer.json I/O.

The pre-tokenizer is Qwen2/Qwen3's split regex followed by GPT-2 byte-to-unicode mapping, exactly
as in Qwen's tokenizer.json (Split(Isolated) then ByteLevel(add_prefix_space=false,
use_regex=false)). Python's `re` lacks \\p{L}/\\p{N}, so those classes are built from
`unicodedata` categories, and \\s is Oniguruma's Unicode White_Space set (what the Rust and JS
tokenizers use), so the Python encoder splits text exactly as they do.
"""

import heapq
import json
import re
import sys
import unicodedata
from collections import Counter

# Qwen2/Qwen3 split pattern, verbatim from their tokenizer.json.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Unicode White_Space property (Oniguruma's \s in Unicode mode).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _category_class(prefix):
    """Character-class body (ranges) of all code points whose category starts with prefix."""
    ranges, start, prev = [], None, None
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)).startswith(prefix):
            if start is None:
                start = cp
            prev = cp
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    return "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges)


def _python_split_regex():
    letters, numbers = _category_class("L"), _category_class("N")
    pat = QWEN_SPLIT_PATTERN
    # Order matters: replace the negated forms before the plain ones.
    pat = pat.replace(r"[^\r\n\p{L}\p{N}]", f"[^\\r\\n{letters}{numbers}]")
    pat = pat.replace(r"[^\s\p{L}\p{N}]", f"[^{WHITE_SPACE}{letters}{numbers}]")
    pat = pat.replace(r"\p{L}", f"[{letters}]").replace(r"\p{N}", f"[{numbers}]")
    pat = pat.replace(r"\S", f"[^{WHITE_SPACE}]").replace(r"\s", f"[{WHITE_SPACE}]")
    return re.compile(pat)


SPLIT_RE = _python_split_regex()
SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def pretokenize(text):
    """Split regex then byte-level mapping: list of pre-token strings in byte-unicode form."""
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))
            for piece in SPLIT_RE.findall(text)]


def train_bpe(text, vocab_size, log=print):
    """Learn merges until the vocab (256 bytes + merges + specials) reaches vocab_size.

    Returns (vocab: {token_string: id}, merges: [(left, right)]). Ties between equally
    frequent pairs go to the lexicographically smallest (left, right) string pair, so the
    result is deterministic.
    """
    word_counts = Counter(pretokenize(text))
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    id_to_str = [BYTE_TO_CHAR[b] for b in range(256)]
    words = [[vocab[c] for c in w] for w in word_counts]
    counts = list(word_counts.values())
    pair_counts, where = Counter(), {}
    for wi, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += counts[wi]
            where.setdefault(pair, set()).add(wi)
    heap = [(-c, id_to_str[a], id_to_str[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    target = vocab_size - len(SPECIAL_TOKENS)
    while len(vocab) < target and heap:
        neg, _sa, _sb, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        merged = id_to_str[a] + id_to_str[b]
        if merged not in vocab:
            vocab[merged] = len(id_to_str)
            id_to_str.append(merged)
        new_id = vocab[merged]
        merges.append((id_to_str[a], id_to_str[b]))
        touched = set()
        for wi in list(where.get((a, b), ())):
            w, c = words[wi], counts[wi]
            for pair in zip(w, w[1:]):
                pair_counts[pair] -= c
                touched.add(pair)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for pair in zip(out, out[1:]):
                pair_counts[pair] += c
                where.setdefault(pair, set()).add(wi)
                touched.add(pair)
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, id_to_str[pair[0]], id_to_str[pair[1]], *pair))
        if len(merges) % 500 == 0:
            log(f"merges {len(merges)} vocab {len(vocab)} last {merged!r} count {-neg}")
    return vocab, merges


class Tokenizer:
    """Encoder/decoder over a trained vocab + merges (+ special tokens appended after them)."""

    def __init__(self, vocab, merges):
        self.vocab = dict(vocab)
        for t in SPECIAL_TOKENS:
            if t not in self.vocab:
                self.vocab[t] = len(self.vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.merges = [tuple(m) for m in merges]
        self.special_ids = {t: self.vocab[t] for t in SPECIAL_TOKENS}
        self.cache = {}

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        syms = list(word)
        while len(syms) > 1:
            best = min(((self.ranks.get(p, 1 << 60), i) for i, p in enumerate(zip(syms, syms[1:]))))
            if best[0] == 1 << 60:
                break
            a, b = syms[best[1]], syms[best[1] + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        ids = [self.vocab[s] for s in syms]
        self.cache[word] = ids
        return ids

    def encode(self, text, allow_special=True):
        """Token ids of text; special-token strings map to their ids when allow_special."""
        ids = []
        parts = SPECIAL_RE.split(text) if allow_special else [text]
        for part in parts:
            if allow_special and part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                for w in pretokenize(part):
                    ids.extend(self._bpe(w))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.id_to_token[i]
            if t in self.special_ids:
                out.extend(t.encode("utf-8"))
            else:
                out.extend(CHAR_TO_BYTE[c] for c in t)
        return out.decode("utf-8", errors="replace")

    def to_hf_json(self):
        """Hugging Face tokenizer.json (Qwen-style pipeline) as a dict."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": True} for t in SPECIAL_TOKENS
            ],
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_PATTERN},
                     "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                     "use_regex": False},
                ],
            },
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                               "trim_offsets": False, "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                        "use_regex": False},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {t: i for t, i in self.vocab.items() if t not in self.special_ids},
                "merges": [[a, b] for a, b in self.merges],
            },
        }

    @staticmethod
    def from_hf_json(path):
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        vocab = dict(data["model"]["vocab"])
        for t in data["added_tokens"]:
            vocab[t["content"]] = t["id"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                  for m in data["model"]["merges"]]
        return Tokenizer(vocab, merges)
