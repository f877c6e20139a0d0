#!/usr/bin/env python3
"""Reference data for the tokenizer tests (tests/data/tokenizer/), from HF `tokenizers` and transformers.

  python3 scripts/dev/make_tokenizer_refs.py [--test-binary build-tok/tests/test_tokenizer]

Writes
  strings.json        the test strings (>= 300: many scripts, combining marks, whitespace runs, digits,
                      code, emoji with ZWJ sequences, very long words, special-token look-alikes, ...)
  refs_<name>.json    per tokenizer: encode(s).ids with add_special_tokens False / True, decode of the
                      latter with skip_special_tokens False / True, and decodes of random id sequences
  chat_refs.json      transformers apply_chat_template on the real chat templates

Tokenizers: the fixtures ../shared/fixtures/tokenizers/{spm32k,llama3,qwen3} (tokenizer.json.gz), and
SmolLM2-135M-Instruct, whose tokenizer lives in its GGUF. For SmolLM2 the reference is HF `tokenizers`
running the tokenizer.json that Atom exports from the GGUF (the test binary writes it when
ATOM_TOKENIZER_EXPORT_DIR is set); it is also compared here with transformers' own GGUF tokenizer
loading, and the strings where the two differ are listed (and explained) in refs_smollm2.json.
"""
import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "tokenizers")
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
GGUF_DIR = os.path.join(ROOT, ".cache", "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_strings():
    s = [
        "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\n ", "a", "A", "Hello", " Hello", "Hello ",
        "  Hello  ", "Hello world", "Hello, world!", "hello   world", "Hello\tworld", "Hello\nworld",
        "Hello\r\nworld\r\n", "line one\nline two\n\nline four\n", "\n\n\nthree newlines first",
        "trailing newlines\n\n\n", "tabs\t\t\tand  spaces   mixed \t \n", " \t\n\r\x0b\x0c all ascii spaces",
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
        "I'm sure you'll see it's what they've said they'd do.",
        "I'M SURE YOU'LL SEE IT'S WHAT THEY'VE SAID THEY'D DO.", "it'S mIxEd'Ll 'Re 'vE 'D 'M",
        "don't", "'s", "'", "''", "'''", "it's", "its'", "'ſ long s", "the Kelvin sign \u212a and 'K",
        "Mr. O'Neil's co-op isn't a 'coop'.", "rock 'n' roll", "\"quoted\" and 'single' and `back`",
        "Numbers: 0 1 12 123 1234 12345 123456", "3.14159265358979", "1,000,000.00", "-42", "+7e-10",
        "2024-01-15T12:34:56Z", "0x1F 0b1010 0o777", "v1.2.3-beta.4", "$1,234.56 €99 £5 ¥1000",
        "1" * 100, "9876543210" * 12, "a1b2c3d4e5f6", "abc123def456", "123abc",
        "٠١٢٣٤٥٦٧٨٩ Arabic-Indic digits",
        "०१२३४५६७८९ Devanagari digits", "½ ¼ ¾ ² ³ ⁴ ₁ ₂", "Ⅰ Ⅱ Ⅲ Ⅻ roman numerals", "①②③ circled",
        "１２３ fullwidth digits", "〇一二三 Chinese numerals", "phone: +1 (555) 123-4567",
        "def add(a, b):\n    return a + b\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += v[i];\n}",
        "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size(); }\n",
        '{"key": "value", "list": [1, 2.5, null, true], "nested": {"a": "b"}}',
        "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
        "SELECT name, COUNT(*) FROM users WHERE age > 21 GROUP BY name;",
        "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
        "const f = (x) => x ** 2; // arrow\n/* block */",
        "if x == None:\n\tpass\nelif y != 0: raise ValueError('bad')",
        "regex: ^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\\.[a-zA-Z0-9-.]+$",
        "path\\to\\file.txt C:\\Windows\\System32",
        "https://example.com/path/to/page?query=1&other=two#fragment",
        "    indented with four spaces", "        eight spaces", "\t\ttwo tabs", "x = [  1,   2,    3  ]",
        "a    b", "a  \n  b", "a \n\n b", "end with spaces   ", "   start with spaces", "...", "!!!???",
        "—–-‒ dashes", "“smart quotes” ‘single’ «guillemets» „low“", "ellipsis… and · middle dot",
        "©®™ §¶ †‡ •", "∀x∈ℝ: x²≥0 ∧ √4=2 ∑∏∫∂∇", "→←↑↓⇒⇔", "≤≥≠≈∞", "←★☆♠♣♥♦",
        "Français: Ça va? Où est l'hôtel? Élève, naïve, cœur.", "Español: ¿Qué tal? ¡Mañana! Niño.",
        "Deutsch: Straße, Größe, Übung, Fräulein, ÄÖÜ äöü ß ẞ", "Português: São Paulo, ação, coração.",
        "Italiano: perché, città, più.", "Polski: Zażółć gęślą jaźń.", "Čeština: Příliš žluťoučký kůň.",
        "Türkçe: İstanbul ılık ışık, I ı İ i", "Română: știință și țară.", "Magyar: árvíztűrő tükörfúrógép",
        "Tiếng Việt: Xin chào, tôi là người Việt Nam.", "Íslenska: Þetta er ðæ.",
        "Русский: Съешь же ещё этих мягких французских булок.", "Українська: Ґанок, їжак, є.",
        "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "中文：我能吞下玻璃而不伤身体。",
        "日本語：私はガラスを食べられます。それは私を傷つけません。", "ひらがな カタカナ ｶﾀｶﾅ 漢字",
        "한국어: 나는 유리를 먹을 수 있어요. 그래도 아프지 않아요", "עברית: אני יכול לאכול זכוכית וזה לא מזיק לי.",
        "العربية: أنا قادر على أكل الزجاج و هذا لا يؤلمني.", "فارسی: من می توانم بدون احساس درد شيشه بخورم",
        "हिन्दी: मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.", "বাংলা: আমি কাঁচ খেতে পারি।",
        "தமிழ்: நான் கண்ணாடி சாப்பிடுவேன்.", "ไทย: ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
        "ქართული: მინას ვჭამ და არა მტკივა.", "Հայերեն: Կրնամ ապակի ուտել։", "አማርኛ: ብርጭቆ መብላት እችላለሁ።",
        "ᠮᠣᠩᠭᠣᠯ Mongolian", "བོད་ཡིག Tibetan", "ᐃᓄᒃᑎᑐᑦ Inuktitut", "ꦗꦮ Javanese", "𐌰𐌱𐌲 Gothic",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕸𝖆𝖙𝖍",
        "e\u0301 decomposed é vs \u00e9 composed", "a\u0308o\u0308u\u0308",
        "a\u0301\u0302\u0303\u0304\u0305 stacked",
        "Z\u0351\u036b\u0343a\u0352\u0304l\u0357g\u0334o\u0358 zalgo", "\u1e0b\u0323 reorder",
        "q\u0307\u0323 marks",
        "\u1100\u1161\u11a8 jamo", "\u212b angstrom \u00c5 \u0041\u030a", "\u2126 ohm", "ﬁ ﬂ ligatures",
        "\u0344 \u0958 \u2adc exclusions", "क\u093c nukta", "\u0fb2\u0f80 tibetan", "\u3099\u309a lone marks",
        "\u0301 starts with a mark", "café\u0301", "Å\u0301", "\ufb2c hebrew", "\u1f71 greek oxia",
        "😀", "😀😃😄😁", "👍🏽 thumbs up medium skin", "👨‍👩‍👧‍👦 family", "👩🏾‍💻 technologist", "🏳️‍🌈 rainbow flag",
        "🇺🇸🇯🇵🇩🇪 flags", "1️⃣ 2️⃣ #️⃣ keycaps", "❤️ ♥ ❤", "🤖 robot 🧠 brain 🦀 crab", "emoji at end 🎉",
        "🎉 emoji at start", "x🎉y🎉z", "☃️⛄", "🫠 melting", "👁️‍🗨️", "🧑‍🤝‍🧑", "🇪🇺", "©️",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n", "<s>", "</s>", "<unk>",
        "<s>Hello</s>", " <s> ", "<s><s>", "Hello<s>world", "Hello <s> world", "[INST]", "[/INST]",
        "[INST] What is 2+2? [/INST]", "<<SYS>>\nsystem\n<</SYS>>", "<|begin_of_text|>", "<|end_of_text|>",
        "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>", "<|reserved_special_token_5|>",
        "<|reserved_special_token_250|>", "<think>\nreasoning\n</think>", "<tool_call>x</tool_call>",
        "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|im_start", "<|im_start|", "im_start|>",
        "<|im_start|><|im_end|>", "<|im_start|>\n", "\n<|im_end|>", "<0x41>", "<0x0A>", "<0xZZ>",
        "▁", "▁▁", "▁hello", "Ġ", "Ġhello", "Ċ", "<|", "|>", "<|>", "< |im_start| >", "<|IM_START|>",
        "<repo_name>", "<filename>a.py", "<jupyter_code>", "<|endoftext|><|endoftext|>",
        "x" * 1000, "ab" * 300, "supercalifragilisticexpialidocious" * 8,
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 510,
        "The" + " the" * 200, ("word " * 300).strip(), " " * 300, "\n" * 50, "\t" * 40, " \n" * 40,
        "lorem ipsum dolor sit amet " * 20, "QmFzZTY0IGVuY29kZWQgc3RyaW5nIGZvciB0ZXN0aW5nIHB1cnBvc2Vz" * 6,
        "日本語のとても長い文章を書いています。" * 10, "中文" * 200, "한국어" * 100, "🙂" * 100,
        "\x00 null byte", "bell\x07 and escape\x1b[0m", "\x7f delete", "\u0085 next line",
        "a\u00a0b no-break",
        "a\u2028b line sep", "a\u2029b para sep", "a\u3000b ideographic space", "a\u200bb zero width space",
        "a\u200db ZWJ alone", "a\ufeffb BOM", "\ufeffBOM at start", "a\u202fb\u205fc\u2009d thin spaces",
        "\u1680 ogham space", "\u180e mongolian vowel separator", "\x1c\x1d\x1e\x1f separators",
        "\u00ad soft hyphen", "\u2062 invisible times", "\U000e0001 language tag", "\ue000 private use",
        "\U0010fffd plane 16", "\U0001d400 math bold A", "\u0130\u0131 dotted i", "ǅ titlecase", "ﬃ ﬄ",
        "ʼn apostrophe n", "Σίσυφος ς", "ΐ", "\u0390", "ᾳ ᾼ", "K k K", "ß SS ẞ", "µ μ", "Ω Ω",
    ]
    rng = random.Random(1234)
    assigned = [cp for cp in range(0x20, 0x30000)
                if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    blocks = [(0x20, 0x7f), (0xa0, 0x250), (0x300, 0x370), (0x370, 0x400), (0x400, 0x530), (0x590, 0x700),
              (0x900, 0xe00), (0x1100, 0x1200), (0x2000, 0x2070), (0x3040, 0x3100), (0x4e00, 0x4f00),
              (0xac00, 0xad00), (0x1f300, 0x1f650)]
    for i in range(110):
        n = rng.randint(1, 40)
        if i % 3 == 0:  # anywhere in the assigned code points
            chars = [chr(rng.choice(assigned)) for _ in range(n)]
        else:  # a few blocks at a time, with ASCII spaces and punctuation mixed in
            picks = rng.sample(blocks, rng.randint(1, 3))
            chars = []
            for _ in range(n):
                r = rng.random()
                if r < 0.15:
                    chars.append(rng.choice([" ", " ", "  ", "\n", "\t", "'", ".", ",", "1", "42"]))
                else:
                    lo, hi = rng.choice(picks)
                    cp = rng.randrange(lo, hi)
                    chars.append(chr(cp) if unicodedata.category(chr(cp)) != "Cn" else "?")
        s.append("".join(chars))
    return s


def fixture_json(name):
    with gzip.open(os.path.join(FIXTURES, name, "tokenizer.json.gz"), "rt", encoding="utf-8") as f:
        return json.load(f)


def load_fixture(name):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(json.dumps(fixture_json(name)))


# Variants of the fixtures that exercise the tokenizer.json features the fixtures themselves do not
# use. The test applies the same edits: "set" replaces top-level keys, "model" keys of the model, and
# "added_tokens" are appended.
def byte_level(add_prefix_space, use_regex):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True,
            "use_regex": use_regex}


def split(pattern, behavior, invert=False):
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


def metaspace(prepend_scheme, split_words):
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": prepend_scheme,
            "split": split_words}


def template(bos, bos_id, eos, eos_id):
    """TemplateProcessing: bos $A eos."""
    def special(token):
        return {"SpecialToken": {"id": token, "type_id": 0}}
    return {"type": "TemplateProcessing",
            "single": [special(bos), {"Sequence": {"id": "A", "type_id": 0}}, special(eos)],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]},
                               eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}}


def added(content, special, normalized, lstrip=False, rstrip=False, single_word=False):
    return {"content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"},
    {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
VARIANTS = [
    # transformers' current Llama tokenizer: Metaspace pre-tokenizer (prefix only at the very start).
    {"name": "spm32k_metaspace_first", "base": "spm32k",
     "set": {"normalizer": None, "pre_tokenizer": metaspace("first", False), "decoder": SPM_DECODER}},
    # Metaspace splitting into words, the Metaspace decoder, BOS and EOS from a template.
    {"name": "spm32k_metaspace_split", "base": "spm32k",
     "set": {"normalizer": None, "pre_tokenizer": metaspace("always", True),
             "decoder": metaspace("always", True), "post_processor": template("<s>", 1, "</s>", 2)}},
    # Unknown characters without byte fallback (fused, then not fused), and added tokens with every flag.
    {"name": "spm32k_unk_added", "base": "spm32k", "model": {"byte_fallback": False},
     "added_tokens": [added("<tool>", True, False, lstrip=True, rstrip=True),
                      added("hello world", False, True),
                      added("cat", False, False, single_word=True),
                      added("éé", False, False),
                      added("[MASK]", True, True, lstrip=True),
                      added("ing", False, False, rstrip=True)]},
    {"name": "spm32k_unk_unfused", "base": "spm32k", "model": {"byte_fallback": False, "fuse_unk": False}},
    # GPT-2 style: ByteLevel with its own regex and a prefix space; BOS and EOS from a template.
    {"name": "llama3_gpt2_prefix", "base": "llama3",
     "set": {"pre_tokenizer": byte_level(True, True),
             "post_processor": template("<|begin_of_text|>", 128000, "<|end_of_text|>", 128001)},
     "model": {"ignore_merges": False},
     "added_tokens": [added("  ", False, True), added(" cat", False, False, single_word=True)]},
    # Split behaviors, inversion and Digits.
    {"name": "qwen3_split_behaviors", "base": "qwen3",
     "set": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         split({"String": " "}, "MergedWithPrevious"),
         split({"Regex": "[.,!?]+"}, "MergedWithNext"),
         split({"Regex": "\\p{L}+"}, "Contiguous", invert=True),
         {"type": "Digits", "individual_digits": False},
         split({"String": "\n"}, "Removed"),
         byte_level(False, False)]}}},
    {"name": "qwen3_nfd_strip", "base": "qwen3",
     "set": {"normalizer": {"type": "Sequence", "normalizers": [
                 {"type": "NFD"}, {"type": "Strip", "strip_left": True, "strip_right": True}]},
             "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                 {"type": "Digits", "individual_digits": True},
                 split({"Regex": "\\s+"}, "Isolated", invert=True),
                 byte_level(True, False)]}}},
]


def variant_json(variant):
    tokenizer = fixture_json(variant["base"])
    for key, value in variant.get("set", {}).items():
        tokenizer[key] = value
    for key, value in variant.get("model", {}).items():
        tokenizer["model"][key] = value
    next_id = max(t["id"] for t in tokenizer["added_tokens"]) + 1
    for token in variant.get("added_tokens", []):
        tokenizer["added_tokens"].append(dict(token, id=next_id))
        next_id += 1
    return tokenizer


def references(tok, strings, rng):
    ids = [tok.encode(s, add_special_tokens=False).ids for s in strings]
    ids_special = [tok.encode(s, add_special_tokens=True).ids for s in strings]
    vocab = tok.get_vocab_size(with_added_tokens=True)
    specials = [i for i in range(vocab) if tok.id_to_token(i) is not None and
                tok.decode([i], skip_special_tokens=True) == "" and tok.decode([i]) != ""][:50]
    random_ids = []
    for k in range(60):
        n = rng.randint(1, 24)
        seq = [rng.randrange(vocab) for _ in range(n)]
        if k % 2 == 0 and specials:  # some special tokens in between
            for _ in range(rng.randint(1, 3)):
                seq.insert(rng.randrange(len(seq) + 1), rng.choice(specials))
        if k % 5 == 0:  # byte tokens and ids past the vocabulary
            seq.append(vocab + rng.randrange(100))
        random_ids.append(seq)
    return {
        "ids": ids,
        "ids_special": ids_special,
        "decoded": [tok.decode(x, skip_special_tokens=False) for x in ids_special],
        "decoded_skip": [tok.decode(x, skip_special_tokens=True) for x in ids_special],
        "random_ids": random_ids,
        "random_decoded": [tok.decode(x, skip_special_tokens=False) for x in random_ids],
        "random_decoded_skip": [tok.decode(x, skip_special_tokens=True) for x in random_ids],
    }


def write_json(name, value):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def smollm2_export(test_binary):
    """tokenizer.json / tokenizer_config.json as Atom exports them from the SmolLM2 GGUF."""
    out = tempfile.mkdtemp(prefix="atom_tok_export_")
    env = dict(os.environ, ATOM_TOKENIZER_EXPORT_DIR=out)
    subprocess.run([test_binary, "--gtest_filter=GgufTokenizer.SmolLM2ExportsAnHfTokenizerJson"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return out


# The chat templates of Llama-2-chat and Mistral/Mixtral-Instruct (v0.1), as their tokenizer_config.json
# files ship them (the fixtures carry Llama-3's, Qwen3's; SmolLM2's is in its GGUF).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red."}],
    [{"role": "user", "content": "  padded with spaces \n\n"}, {"role": "assistant",
    "content": "\n  also padded  "},
     {"role": "user", "content": "\tok\t"}],
    [{"role": "user", "content": "Ünïcödé 日本語 🎉 <|im_start|> [INST] <s>"}],
    [{"role": "user", "content": "Think first."},
     {"role": "assistant", "content": "<think>\nLet me think.\n</think>\n\nThe answer."}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>old</think>a1"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "\n\na2 without thinking"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}],
    [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    [{"role": "system", "content": "Only a system prompt."}],
    [{"role": "user", "content": "multi\nline\n\ncontent"}, {"role": "assistant",
    "content": "reply\nwith\nlines"}],
]


def chat_references(smollm2_template):
    from transformers import PreTrainedTokenizerFast
    templates = {}
    for name in ("llama3", "qwen3"):
        with open(os.path.join(FIXTURES, name, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        templates[name] = (config["chat_template"], config.get("bos_token") or "",
        config.get("eos_token") or "")
    templates["smollm2"] = (smollm2_template, "<|im_start|>", "<|im_end|>")
    templates["llama2"] = (LLAMA2_TEMPLATE, "<s>", "</s>")
    templates["mistral"] = (MISTRAL_TEMPLATE, "<s>", "</s>")
    base = load_fixture("spm32k")
    cases = []
    for name, (template, bos, eos) in templates.items():
        tok = PreTrainedTokenizerFast(tokenizer_object=base, bos_token=bos or None, eos_token=eos or None)
        tok.chat_template = template
        for i, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                try:
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                    cases.append({"template": name, "conversation": i, "add_generation_prompt": gen,
                    "text": text})
                except Exception as e:  # the template raised (roles that do not alternate, ...)
                    cases.append({"template": name, "conversation": i, "add_generation_prompt": gen,
                    "error": str(e)})
    return {"templates": {k: {"template": t, "bos_token": b, "eos_token": e} for k, (t, b,
    e) in templates.items()},
            "conversations": CONVERSATIONS, "cases": cases}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-binary", default=os.path.join(ROOT, "build-tok", "tests", "test_tokenizer"))
    args = parser.parse_args()
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    os.makedirs(OUT, exist_ok=True)
    strings = test_strings()
    assert len(strings) >= 300, len(strings)
    write_json("strings.json", strings)
    for name in ("spm32k", "llama3", "qwen3"):
        write_json(f"refs_{name}.json", references(load_fixture(name), strings, random.Random(name)))
    write_json("variants.json", VARIANTS)
    for variant in VARIANTS:
        tok = Tokenizer.from_str(json.dumps(variant_json(variant)))
        write_json(f"refs_{variant['name']}.json", references(tok, strings, random.Random(variant["name"])))

    export_dir = smollm2_export(args.test_binary)
    exported = Tokenizer.from_file(os.path.join(export_dir, "tokenizer.json"))
    refs = references(exported, strings, random.Random("smollm2"))
    gguf_tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME).backend_tokenizer
    mismatches = []
    for i, s in enumerate(strings):
        for special in (False, True):
            theirs = gguf_tok.encode(s, add_special_tokens=special).ids
            ours = refs["ids_special" if special else "ids"][i]
            if theirs != ours:
                mismatches.append({"string": i, "add_special_tokens": special, "transformers_gguf": theirs})
    refs["transformers_gguf_mismatches"] = mismatches
    refs["transformers_gguf_note"] = (
        "transformers' GGUF loader gives a 'smollm' GGUF GPT-2's pre-tokenizer alone; Atom follows llama.cpp "
        "(and SmolLM2's own tokenizer.json): digits split one by one first, then GPT-2's pre-tokenizer.")
    print(f"smollm2: transformers GGUF tokenizer differs from the exported tokenizer.json on "
          f"{len(mismatches)} of {2 * len(strings)} encodings")
    for m in mismatches[:10]:
        print("  ", repr(strings[m["string"]])[:80], m["add_special_tokens"])
    write_json("refs_smollm2.json", refs)
    with open(os.path.join(export_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        smollm2_template = json.load(f)["chat_template"]
    write_json("chat_refs.json", chat_references(smollm2_template))


if __name__ == "__main__":
    sys.exit(main())
