"""Quality gates of the final filter that read one row at a time: language, profanity, PII, entities.

Each function is pure and cheap; `filters.filter_rows` applies them in the order the config's
`quality` and `diversity` sections ask for and records one reject reason per row.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from typing import Any

_WORD = re.compile(r"[A-Za-zÀ-ÿ']+")


def language_of(text: str) -> dict[str, float]:
    """Language probabilities of `text` (langdetect, seeded so the answer is repeatable)."""
    # langdetect loads its profiles: only when a language is checked
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return {x.lang: x.prob for x in detect_langs(text)}
    except LangDetectException:  # no letters at all
        return {}


# Frequent function words: a message using none of them is unlikely to be in that language.
FUNCTION_WORDS = {
    "en": set(
        "i me my mine you your we our us he she it its they them their a an the this that these those is are was "
        "were be been am do does did doing have has had not no can could will would should may might must shall "
        "to of in on at for from with by about into over after before and or but if so than then there here "
        "what which who whom whose when where why how all any some".split()
    ),
}


def wrong_language(text: str, language: str) -> bool:
    """True when `text` is confidently not in `language`: at least 4 words, none of the language's
    function words (where we list them) in a fifth of its words, and langdetect gives the language under 0.1.
    Measured on real Banking77 messages (all English): langdetect alone flags 2.2% of 1,000 test
    messages; this rule flags 1 of the 3,080 test and 2 of the 10,003 train messages."""
    words = [w.lower() for w in _WORD.findall(text or "")]
    if len(words) < 4:
        return False
    fw = FUNCTION_WORDS.get(language)
    if fw is not None and sum(w in fw for w in words) >= 0.2 * len(words):
        return False
    probs = language_of(text)
    return bool(probs) and probs.get(language, 0.0) < 0.1


# A short list of unambiguous English profanity and slurs (any case), matched after undoing the
# common obfuscations: letters spelt with digits or symbols ("sh1t", "f*ck", "$hit"), letters
# repeated ("fuuuck") or spaced out ("f u c k"). Mild words that occur in ordinary complaints
# ("damn", "hell", "sucks") are not on it.
PROFANITY = (
    "fuck", "fucking", "fucked", "fucker", "motherfucker", "shit", "shitty", "bullshit", "asshole", "bitch",
    "bastard", "cunt", "dickhead", "wanker", "twat", "prick", "slut", "whore", "retard", "faggot", "nigger",
)  # fmt: skip
# what each letter may be written as; a masked letter (* # @ .) stands for any vowel
_LEET = {"a": "a4@*", "e": "e3*", "i": "i1!|*", "o": "o0*", "u": "uv*", "s": "s5$", "t": "t7", "g": "g9", "c": "ck("}


def _fuzzy(word: str) -> str:
    """A word's pattern: each letter as itself or its stand-ins, repeated any number of times."""
    return "".join(f"[{re.escape(_LEET.get(ch, ch))}]+" for ch in word)


_PROFANITY = re.compile(r"(?<![a-z0-9])(" + "|".join(_fuzzy(w) for w in PROFANITY) + r")(?![a-z0-9])", re.I)
_SPACED = re.compile(r"(?<![\w*])(?:[\w*$@!][ ._-]){2,}[\w*$@!](?![\w*])")  # "f u c k", "s.h.i.t"


def _squash(text: str) -> str:
    """Spaced-out letters joined back ("f u c k" → "fuck"); everything else as it was."""
    return _SPACED.sub(lambda m: re.sub(r"[ ._-]", "", m.group()), text or "")


def profanity(text: str) -> list[str]:
    """The profane words in `text` (lower case, as written), seen through the obfuscations above."""
    return sorted({m.lower() for m in _PROFANITY.findall(_squash(text))})


# ---------------------------------------------------------------- PII
# presidio's pattern recognizers (checksums for cards and IBANs, phonenumbers' parser for phone
# numbers, validated IPv4/IPv6, e-mail, URL, US SSN), no NLP model: they work offline. Names and
# street addresses need a NER model presidio would download; two rules stand in for them.

_STREET = r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|square|sq|close)"
_RULES = [
    # a house number, one to three capitalised words and a street type: "221B Baker Street", "12 Elm Rd."
    ("address", re.compile(r"\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][a-z]+\s+){1,3}(?i:" + _STREET + r")\b\.?")),
    # names, where a rule can tell: after a title, or after "my name is"
    ("name", re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)")),
    ("name", re.compile(r"(?i:\bmy name is)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)\b")),
]
PII_KINDS = ("email", "iban", "card", "ip", "url", "ssn", "phone", "address", "name")


def _web(span: str) -> bool:  # a bare "word.Word" is a missing space far more often than a web address
    return re.match(r"(?i)(https?|ftp)://|www\.", span) is not None


def _international(span: str) -> bool:
    return span.startswith("+") and len(re.sub(r"\D", "", span)) >= 10


@contextlib.contextmanager
def _without(*modules: str):
    """Within it, importing `modules` fails as if they were not installed, unless a module is loaded
    already; after it, they import as usual."""
    hidden = [m for m in modules if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        yield
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


@functools.cache
def _recognizers() -> list[tuple[str, Any, Any]]:
    """(kind, presidio recognizer, check of the span or None)."""
    # presidio reads the public-suffix list for URLs: the copy in tldextract's wheel, never the network
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    # presidio's package imports torch and transformers, both optional to it, for NER engines and a
    # GPU probe the pattern recognizers here never use: 6.2 s of a stage kernel's first PII check
    # with them, 1.8 s without (docs/timings.md); a kernel that has loaded them already pays nothing
    with _without("torch", "transformers"):
        from presidio_analyzer import predefined_recognizers as pr  # spaCy (seconds): only where PII is checked

    return [
        ("email", pr.EmailRecognizer(), None),
        ("iban", pr.IbanRecognizer(), None),
        ("card", pr.CreditCardRecognizer(), None),
        ("ip", pr.IpRecognizer(), None),
        ("url", pr.UrlRecognizer(), _web),
        ("ssn", pr.UsSsnRecognizer(), None),
        ("phone", pr.PhoneRecognizer(), None),  # numbers phonenumbers calls valid for a region
        # and any number written in international form ("+44 7700 900123"), valid or not: the
        # fictional ranges are what a generator writes
        ("phone", pr.PhoneRecognizer(leniency=0), _international),
    ]


def _upper(text: str) -> str:
    """Upper case with every character kept in place (an IBAN written in lower case is still one)."""
    return "".join(u if len(u := c.upper()) == 1 else c for c in text)


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each e-mail, IBAN, card number, IP address, URL, US SSN, phone number,
    street address and name (after a title or "my name is") in `text`, earliest first,
    non-overlapping (the longer span wins). For names only the name itself is the span."""
    text = text or ""
    found: list[tuple[str, int, int]] = []
    for kind, rec, check in _recognizers():
        seen = _upper(text) if kind == "iban" else text
        for hit in rec.analyze(seen, rec.supported_entities, None):
            if check is None or check(text[hit.start : hit.end]):
                found.append((kind, hit.start, hit.end))
    for kind, rx in _RULES:
        for m in rx.finditer(text):
            found.append((kind, *(m.span(1) if rx.groups else m.span())))
    out: list[tuple[str, int, int]] = []
    for kind, s, e in sorted(found, key=lambda x: (x[1] - x[2], x[1])):  # longest first
        if not any(s < e2 and s2 < e for _, s2, e2 in out):
            out.append((kind, s, e))
    return sorted(out, key=lambda x: x[1])


def redact(text: str) -> tuple[str, list[str]]:
    """`text` with each PII span replaced by [KIND], and the kinds found."""
    spans = find_pii(text)
    out, last = [], 0
    for kind, s, e in spans:
        out += [text[last:s], f"[{kind.upper()}]"]
        last = e
    out.append(text[last:])
    return "".join(out), [k for k, _, _ in spans]


REDACTED = re.compile(r"\[(?:" + "|".join(k.upper() for k in PII_KINDS) + r")\]")  # what `redact` writes

# ---------------------------------------------------------------- toxicity
# Threats, harassment aimed at a person, and hate: the rules below, and alt-profanity-check's
# linear model (its weights ship in the wheel) for abusive language they do not list. The model
# also scores rude but ordinary complaints high ("Some idiot stole my card" 0.99, "This company
# sucks!" 0.96), so its threshold is set where it flags 0.05% of the real Banking77 messages
# (docs/gates.md).
TOXIC = (
    r"\b(i('ll| will| am going to|'m going to)|gonna) (kill|hurt|shoot|stab|burn|beat|find) (you|him|her|them|your|everyone)\b",
    r"\b(kill|hurt|stab|beat up|strangle) (you|yourself|them|him|her|everyone)\b",
    r"\byou('re| are)? (an? )?(stupid |fucking |worthless )?(idiot|moron|imbecile|loser|pig|scum)s?\b",
    r"\b(go (and )?die|die in a fire|kill yourself|kys)\b",
    r"\b(bomb|blow up|set fire to|burn down) (the|your) (bank|branch|office|building|house)\b",
    r"\bburn (the|your) (bank|branch|office|building|house) down\b",
    r"\b(hate|despise) (all )?(women|men|jews|muslims|christians|blacks|whites|immigrants|gays)\b",
)
_TOXIC = re.compile("|".join(TOXIC), re.I)
OFFENSIVE_THRESHOLD = 0.9


def offensive_prob(texts: list[str]) -> list[float]:
    """alt-profanity-check's probability that each text is offensive (obfuscations undone first)."""
    if not texts:
        return []
    from profanity_check import predict_prob  # scikit-learn's pickle loads in a second: only where it is checked

    return [float(p) for p in predict_prob([_squash(t or "") for t in texts])]


def toxic(text: str, prob: float | None = None) -> list[str]:
    """The toxic phrases in `text` (threats, harassment, hate), plus "offensive (p=…)" where the
    model scores it at or above OFFENSIVE_THRESHOLD; [] when none. `prob` saves scoring again."""
    found = sorted({m.group(0).lower() for m in _TOXIC.finditer(_squash(text))})
    p = offensive_prob([text])[0] if prob is None else prob
    if p >= OFFENSIVE_THRESHOLD:
        found.append(f"offensive (p={p:.2f})")
    return found


def mentions(text: str, entity: str) -> bool:
    """Whether `text` names `entity` (case-insensitive, word boundaries)."""
    return re.search(r"\b" + re.escape(entity) + r"\b", text or "", re.I) is not None


# ---------------------------------------------------------------- refusals

# Refusal openings (the AdvBench paper's list, Zou et al. 2023, plus a few SmolLM2 uses): the second opinion.
REFUSAL_PHRASES = (
    "i'm sorry", "i am sorry", "i apologize", "as an ai", "as a language model", "as an assistant",
    "i cannot", "i can't", "i can not", "i do not", "i'm not able", "i am not able", "i am unable",
    "i'm unable", "i won't", "i will not", "is illegal and unethical", "i'm really sorry", "unethical",
    "not ethical", "my apologies", "but i cannot", "i'm not going to", "cannot fulfill", "can't assist",
    "cannot provide", "can't provide", "cannot help", "can't help", "not appropriate", "i must decline",
)  # fmt: skip


def refused_by_keyword(reply: str) -> bool:
    r = str(reply).lower().replace("\u2019", "'")
    return not r.strip() or any(p in r for p in REFUSAL_PHRASES)
