"""The CLIP BPE tokenizer (as transformers' CLIPTokenizer computes it), in plain Python.

tokenizer(list_of_prompts) -> LongTensor [B, 77]:  <|startoftext|> tokens[:75] <|endoftext|> pad...

1. special tokens in the text are cut out first (BOS, EOS and the pad token: SDXL's tokenizer_2 pads with "!",
   so transformers' CLIPTokenizer, and this one, read every "!" of a prompt as that token);
2. normalise: Unicode NFC, every whitespace run -> one space, lower case;
3. split into words like the regex
       's|'t|'re|'ve|'m|'ll|'d | \\p{L}+ | \\p{N} | [^\\s\\p{L}\\p{N}]+
   (written below with unicodedata categories, since Python's `re` has no \\p{L});
4. each word's UTF-8 bytes become printable characters (GPT-2's byte-to-unicode table), the last
   one marked with </w>, and byte-pair merges are applied in rank order (Sennrich et al. 2016).
"""
import gzip
import importlib.util
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


class TokenizerError(ValueError):
    pass


@lru_cache()
def bytes_to_unicode():
    """Map the 256 byte values to printable characters: printable bytes map to themselves, the
    others to chr(256 + n). The order matters: the vocabulary lists the printable bytes first."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(rest)}}


def byte_vocab(merges=()):
    """CLIP's vocabulary layout: the 256 byte characters, the same with </w>, one token per merge, then
    <|startoftext|> and <|endoftext|>. With no merges: a byte-level vocabulary (tiny test models)."""
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def _is_letter(c):
    return unicodedata.category(c)[0] == "L"


def _is_number(c):
    return unicodedata.category(c)[0] == "N"


def split_words(text):
    """Step 3: the pre-tokenizer regex, scanned by hand. Whitespace separates and is dropped."""
    words, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" and (m := next((s for s in CONTRACTIONS if text.startswith(s, i + 1)), None)):
            j = i + 1 + len(m)
        elif _is_letter(c):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
        elif _is_number(c):
            j = i + 1
        elif c.isspace():
            i += 1
            continue
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        words.append(text[i:j])
        i = j
    return words


class Tokenizer:
    def __init__(self, vocab, merges, pad_token=EOS, max_length=77):
        self.vocab, self.max_length = vocab, max_length
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        for tok in (BOS, EOS, pad_token):
            if tok not in vocab:
                raise TokenizerError(f"token {tok!r} is not in the vocabulary")
        self.bos, self.eos, self.pad = vocab[BOS], vocab[EOS], vocab[pad_token]
        self.special_tokens = {BOS, EOS, pad_token}
        self.specials = "(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")"
        self.byte_chars = bytes_to_unicode()
        self.cache = {}

    @classmethod
    def from_files(cls, vocab_json, merges_txt, pad_token=EOS, max_length=77):
        """vocab.json + merges.txt (the first line of merges.txt, "#version: ...", is skipped)."""
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges, pad_token, max_length)

    @classmethod
    def from_tokenizer_json(cls, path, pad_token=EOS, max_length=77):
        """The single-file format of the `tokenizers` library (transformers' tokenizer.json): the BPE
        model's vocabulary and merges (as "a b" strings or [a, b] pairs), special tokens included."""
        model = json.loads(Path(path).read_text(encoding="utf-8")).get("model", {})
        if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
            raise TokenizerError(f"{path}: not a CLIP BPE tokenizer (model type {model.get('type')!r}, "
                                 f"end_of_word_suffix {model.get('end_of_word_suffix')!r})")
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(model["vocab"], merges, pad_token, max_length)

    @classmethod
    def from_openai_bpe(cls, path, pad_token=EOS, max_length=77):
        """OpenAI's bpe_simple_vocab_16e6.txt.gz: the first 48,894 merges, and a vocabulary of the
        256 byte characters, the same with </w>, one token per merge, then the two special tokens."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        return cls(byte_vocab(merges), merges, pad_token, max_length)

    def bpe(self, word):
        """Merge the lowest-ranked adjacent pair until no known pair is left (step 4)."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), float("inf")), k) for k, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, first = min(pairs)
            if rank == float("inf"):
                break
            a, b = parts[first], parts[first + 1]
            merged, k = [], 0
            while k < len(parts):                    # merge every occurrence of (a, b), left to right
                if k < len(parts) - 1 and parts[k] == a and parts[k + 1] == b:
                    merged.append(a + b)
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text):
        """Token ids of one prompt, without BOS/EOS and untruncated."""
        ids = []
        for piece in re.split(self.specials, text):
            if piece in self.special_tokens:
                ids.append(self.vocab[piece])
                continue
            norm = re.sub(r"\s+", " ", unicodedata.normalize("NFC", piece)).lower()     # step 2
            for word in split_words(norm):
                chars = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
                ids.extend(self.vocab[t] for t in self.bpe(chars))
        return ids

    def __call__(self, prompts):
        """[B, max_length] ids: BOS, the first max_length - 2 tokens, EOS, then padding."""
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        for p in prompts:
            if not isinstance(p, str):
                raise TokenizerError(f"prompts must be strings, got {type(p).__name__}")
            ids = [self.bos] + self.encode(p)[: self.max_length - 2] + [self.eos]
            rows.append(ids + [self.pad] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


def openai_bpe_path():
    """OpenAI's vocabulary file as shipped inside the clip-anytorch or open_clip_torch wheels."""
    for package, sub in (("clip", ""), ("open_clip", "")):
        spec = importlib.util.find_spec(package)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            f = Path(loc) / sub / "bpe_simple_vocab_16e6.txt.gz"
            if f.is_file():
                return f
    raise TokenizerError("bpe_simple_vocab_16e6.txt.gz not found: install the clip-anytorch or open_clip_torch "
                         "wheel (pip install --no-deps clip-anytorch) or pass the file's path")


def load_tokenizer(path=None, max_length=77, subfolder="tokenizer"):
    """From a model folder (`subfolder`/ with vocab.json and merges.txt, or tokenizer.json; pad token from its
    tokenizer_config.json or special_tokens_map.json: SD 1.x pads with <|endoftext|>, SDXL's tokenizer_2
    with "!"), a tokenizer folder, OpenAI's .txt.gz, or (path=None) OpenAI's file from an installed CLIP package."""
    path = openai_bpe_path() if path is None else Path(path)
    if not path.exists():
        raise TokenizerError(f"{path}: no such file or folder")
    if path.is_file():
        return Tokenizer.from_openai_bpe(path, max_length=max_length)
    folder = path / subfolder if (path / subfolder).is_dir() else path
    has_files = (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
    if not has_files and not (folder / "tokenizer.json").exists():
        raise TokenizerError(f"{path}: no {subfolder}/vocab.json and merges.txt, nor {subfolder}/tokenizer.json")
    pad = EOS
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / name
        if f.exists():
            tok = json.loads(f.read_text()).get("pad_token", pad)
            pad = tok.get("content", pad) if isinstance(tok, dict) else tok
    if has_files:
        return Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt", pad, max_length)
    return Tokenizer.from_tokenizer_json(folder / "tokenizer.json", pad, max_length)
