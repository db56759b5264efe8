"""Over 200 varied prompts for tokenizer parity: punctuation, contractions, unicode, emoji, long, empty."""
import random
base = ["a photo of a cat", "A Photo Of A CAT!!!", "an astronaut riding a horse on mars, 4k, highly detailed",
 "", " ", "   leading and trailing   ", "tabs\tand\nnewlines\r\nhere", "it's a dog's life, isn't it? we'll see; they'd've",
 "I'M SHOUTING'S", "emoji 🐱🚀✨ party 🎉🎉", "café naïve résumé coöperate", "日本語のテキスト、東京タワー", "Привет, мир!",
 "ελληνικά γράμματα", "עברית וערבית العربية", "हिन्दी पाठ", "한국어 문장입니다", "mixed123numbers4567 and 3.14159",
 "½ ² ³ Ⅻ ① numbers", "punctuation... !?!? --- *** ((nested)) [brackets] {braces} <angles>", "snake_case and kebab-case",
 "url https://example.com/path?q=1&x=2", "email someone@example.org", "#hashtag @mention $100 50% ^caret~ `tick`",
 "quotes \"double\" 'single' “curly” ‘also’", "combining e\u0301 vs é and NFC", "ﬁ ligature ﬂ and ß straße",
 "İstanbul DİYARBAKIR", "zero\u200bwidth\u200bspace", "non\u00a0breaking\u00a0space", "a" * 300,
 " ".join(["word"] * 100), "masterpiece, best quality, (ultra-detailed:1.2), 1girl, solo", "🏳️‍🌈 flag and 👨‍👩‍👧 family",
 "ÀÉÎÕÜ uppercase accents", "Ωmega µicro ∑sum ∞", "a red circle at the top left", "it''s double apostrophe", "'s at start",
 "trailing apostrophe'", "x'sy", "don't stop' believing", "12,345,678.90", "a\\backslash\\path", "tab\t\t\tmany"]
def prompts(n=220, seed=0):
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.!?'\"-()[]:;éüñç日本🐱✨\t\n"
    out = list(base)
    while len(out) < n:
        k = rng.choice([1, 5, 20, 80, 400])
        out.append("".join(rng.choice(alphabet) for _ in range(k)))
    return out
