"""Text helpers for the knowledge graph: title clean-up, tokens, and the normalised keys entities are matched by.

Everything here is a pure function of its input, so the extractor and the linker stay easy to test.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that join the parts of a multi-word name ("Black & Decker", "Fred and Friends").
CONNECTORS = frozenset({"&", "and", "+", "of", "de", "la", "from", "n", "'n'"})
# Short words that never end a product type and never make a brand on their own.
STOPWORDS = _words("""
a an the and or of for with without by in on to from at as per plus & + - x n
""")
# Titles that start a brand name but are not one alone: "Mr. Coffee", "Dr. McDougall's".
HONORIFICS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "mr", "mrs", "dr"})
# Marketing, size and pack words: never part of a product type ("Organic Coconut Flour" → "coconut flour").
QUALIFIERS = _words("""
natural original assorted classic new small medium large mini extra jumbo big little regular organic free
gluten-free sugar-free fat-free low-fat non-gmo kosher plain fresh raw pure premium deluxe gourmet
professional genuine authentic certified imported quality heavy-duty pack count piece
pieces pc pcs lb lbs oz ounce ounces inch inches quart quarts gallon gallons liter liters ml qt pint pints
pound pounds gram grams kg serving servings calorie calories each bulk value variety flavor flavors flavored
assortment edition collection series style design model version size brand grade package essential essentials
""")
# Colours, materials, finishes and shapes: they may qualify a type ("green tea", "steel bowl") but never end one.
DESCRIPTORS = _words("""
white black red blue green yellow orange pink purple brown grey gray silver gold clear beige ivory cream navy
light dark stainless steel plastic ceramic bamboo wood wooden metal cotton silicone aluminum aluminium
copper cast iron nonstick non-stick color colors colour unscented scented round square rectangular oval shape
base liquid
""")
# Words that cannot be a brand alone: a brand starting with one needs the next word ("New Metro Design").
NOT_A_BRAND = QUALIFIERS | DESCRIPTORS | _words("best great good super ultra my our your all simply old")
_TOKEN_SPLIT = re.compile(r"[\s/]+")
_TOKEN_STRIP = "\"'“”‘’()[]{},;:!?*#|/\\~`"
# Where a title's head phrase (brand + product type) ends: the first comma, dash, bracket, bar, or a
# preposition that introduces a use or a variant ("... for Cuisinart", "... with Lid", "... Made from Bamboo").
_HEAD_END = re.compile(r"\s*(?:,|\s[-–—]\s|\(|\[|\||\s(?:for|with|w/|by|in|from|made|featuring|includes?)\s|:\s)",
                       re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")
_KEY_DROP = re.compile(r"[^0-9a-z]+")
_CORPORATE = re.compile(r"\b(?:inc|llc|ltd|corp|co|company|gmbh)\b\.?$")


def clean_title(title: str) -> str:
    """HTML entities decoded (`&amp;` → `&`), Unicode NFKC, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", html.unescape(title or "")).split())


def tokens(text: str) -> list[str]:
    """Whitespace- and slash-separated tokens with surrounding punctuation removed (inner punctuation stays:
    "J.A.", "T-fal"); empty tokens dropped."""
    out = []
    for raw in _TOKEN_SPLIT.split(text):
        tok = raw.strip(_TOKEN_STRIP)
        if tok.endswith(".") and len(tok) > 2 and "." not in tok[:-1] and tok.lower() not in HONORIFICS:
            tok = tok[:-1]  # a sentence full stop ("paddle."), not an abbreviation ("J.A.", "Dr.")
        if tok:
            out.append(tok)
    return out


def head_phrase(title: str) -> str:
    """The part of a cleaned title before its first comma, dash, bracket or qualifying preposition."""
    m = _HEAD_END.search(title)
    return title[: m.start()] if m else title


def has_digit(token: str) -> bool:
    """A size, count or model number ("12-Ounce", "DLC-1", "K45SBWH"): never part of a product type."""
    return _DIGIT.search(token) is not None


def has_letter(token: str) -> bool:
    return _LETTER.search(token) is not None


_IE_PLURALS = _words("""cookies brownies smoothies pies movies veggies calories ties goodies beanies hoodies
rookies zombies birdies lies sorties""")


def singular(word: str) -> str:
    """A plain English singular for the last word of a product type ("filters" → "filter", "knives" →
    "knife", "berries" → "berry"); words that merely end in s ("glass", "asparagus") stay."""
    w = word.lower()
    if len(w) <= 3 or w.endswith(("ss", "us", "is", "ous", "'s")):
        return w
    if w in _IE_PLURALS:
        return w[:-1]
    if w.endswith(("eaves", "oaves")):
        return w[:-3] + "f"  # leaves → leaf, loaves → loaf
    if w.endswith("lves"):
        return w[:-3] + "f"  # shelves → shelf, halves → half
    if w.endswith("ives") and len(w) > 5:
        return w[:-3] + "fe"  # knives → knife
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zes", "oes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


@lru_cache(maxsize=1 << 16)
def name_key(name: str, kind: str) -> str:
    """The normalised name two entities must share to be the same by name: lower case, accents and
    punctuation removed, `&`/`and` dropped, a product type's or category's last word singular, a brand's
    corporate suffix ("Inc.", "Co.") dropped, spaces removed ("Kitchen Aid" = "KitchenAid", "Bob's" = "Bobs")."""
    text = unicodedata.normalize("NFKD", clean_title(name)).encode("ascii", "ignore").decode().lower()
    text = text.replace("'", "").replace("’", "")
    words = [w for w in re.split(r"[^0-9a-z]+", text) if w and w not in ("and", "n")]
    if not words:
        return ""
    if kind in ("type", "category"):
        words[-1] = singular(words[-1])
    elif kind == "brand":
        joined = " ".join(words)
        stripped = _CORPORATE.sub("", joined).strip()
        words = stripped.split() or words
    return _KEY_DROP.sub("", "".join(words))
