"""PTB tokenization of captions, as the COCO caption evaluation (pycocoevalcap) does it before scoring.

This module owns `tokenize_captions`: the captions of every image are lower-cased, tokenized Penn-Treebank
style and stripped of punctuation tokens, exactly like `pycocoevalcap.tokenizer.PTBTokenizer`, which runs
Stanford CoreNLP 3.4.1 (`edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`) over all captions
joined by newlines and then drops the tokens in `PUNCTUATIONS`.

Two implementations:
- `java`: the official jar, used when `java` is on PATH and the jar is found (`$VLMKIT_PTB_JAR`, or the
  `stanford-corenlp-3.4.1.jar` shipped inside an installed `pycocoevalcap`);
- `python`: a re-implementation of the 3.4.1 lexer (the JFlex grammar `PTBLexer.flex` with its default
  options: PTB3 escaping, LaTeX quotes, `...` ellipses, `--` dashes, no americanization, no `/` or `*`
  escaping), matched the JFlex way: the longest match wins, trailing context counts towards its length, ties
  go to the earlier rule. Known gaps: only the BMP letter/digit classes Python's `re` offers, and a caption
  holding a line separator other than `\\n` (the official tool then shifts every later caption by a line;
  here the separator is a space).

`tokenizer_name()` says which one `tokenize_captions` uses; results record it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ...errors import VlmkitError

PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])
"""Tokens pycocoevalcap removes after tokenizing. Upper case, so the lower-cased '-lrb-' etc. stay (a quirk)."""
JAR_NAME = "stanford-corenlp-3.4.1.jar"
NL = "\n"  # the NEWLINE token of `-preserveLines`


# ------------------------------------------------------------------------------------------------ lexicon
def _ci(alternatives: str) -> str:
    """A caseless group of literal alternatives, longest first (JFlex matches the longest)."""
    words = sorted(alternatives.split("|"), key=len, reverse=True)
    return "(?i:" + "|".join(words) + ")"


def _bmp_class(test: Callable[[str], bool]) -> str:
    """A character class of the BMP characters passing `test` (e.g. Java's [:uppercase:], [:letter:])."""
    ranges: list[list[int]] = []
    for c in range(0x10000):
        if not test(chr(c)):
            continue
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[" + "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges) + "]"


LET = _bmp_class(str.isalpha)  # [:letter:] (Lu, Ll, Lt, Lm, Lo, as Java's isLetter)
LD = rf"(?:{LET}|\d)"  # [:letter:] | [:digit:]
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
        r"(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
NEWLINE = r"(?:\r\n|\r|\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SENTEND = f"{SPACENL}(?:{SPACENL}|{_bmp_class(str.isupper)}|{SGML})"
APOS = r"(?:['\u0092\u2019]|&(?i:apos);)"
APOSETC = rf"(?:{APOS}|[`\u0091\u2018\u201B])"
SPAMP = r"&(?i:amp);"
LETTER = (f"(?:{LET}|" r"&[aeiouAEIOU](?i:acute|grave|uml);|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF"
          r"\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF"
          r"\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7"
          r"\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F"
          r"\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955"
          r"\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03"
          r"\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD"
          r"\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC"
          r"\u0EC8-\u0ECD])")
WORD = rf"{LETTER}(?:{LETTER}|\d)*(?:[.!?]{LETTER}(?:{LETTER}|\d)*)*"
NUM = r"\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+"
ACRO_TAIL = (rf"{_ci('Canada|Sino|Korean|EU|Japan|non')}-(?i:U\.S)|(?i:U\.S\.-)(?:(?i:U\.S\.S\.R)|(?i:U\.K))")
ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{ACRO_TAIL})"
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{ACRO_TAIL})"
ABSTATE = ("(?:" + _ci("Ala|Ariz|Calif|Colo|Conn|Ct|Dak|Fla|Ga|Ind|Kans|Kan|Ky|Md|Mich|Minn|Mo|Mont|Neb|Nev|"
                       "Okla|Penn|Tenn|Va|Vt|Wisc|Wis|Wyo")
           + "|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash))")
ABBREV1 = ("(?:" + _ci("Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri|"
                       "Inc|Co|Cos|Corp|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|"
                       "Intl|Sys|tel|est|ext|sq|Jr|Sr|Bros|Ed\\.D|Ph\\.D|Blvd|Rd|Esq|etc|al|seq|Bldg")
           + f"|(?i:P)(?i:p)?(?i:t)[ye](?i:s)?|{ABSTATE})\\.")
ABTITLE = ("(?:" + _ci("Mr|Mrs|Ms|Dr|Drs|Prof|Profs|Sen|Sens|Rep|Reps|Atty|Attys|Lt|Col|Gen|Messrs|Gov|Govs|Adm|"
                       "Rev|Maj|Sgt|Cpl|Pvt|Capt|St|Ste|Ave|Pres|Lieut|Hon|Brig|Cmdr|Comdr|Pfc|Spc|Supt|Supts|Det|"
                       "Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc") + "|M(?i:iss))")
ABBREV4 = (f"(?:{ABTITLE}|" + _ci("vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph|Invt|Elec|Natl|Dept")
           + f"|(?i:M)[ft](?i:g)|{ACRO})")
ABBREV3 = _ci("ca|fig|figs|prop|no|nos|art|bldg|pp|op") + r"\."
ACRONYM_NEXT = ("(?:" + "|".join(sorted(
    ["A(?i:bout)", "A(?i:ccording)", "A(?i:dditionally)", "A(?i:fter)", "A(?i:n)", "A", "A(?i:s)", "A(?i:t)",
     "B(?i:ut)", "E(?i:arlier)", "H(?i:e)", "H(?i:er)", "H(?i:ere)", "H(?i:owever)", "I(?i:f)", "I(?i:n)",
     "I(?i:t)", "L(?i:ast)", "M(?i:any)", "M(?i:ore)", r"M(?i:r)\.", r"M(?i:s)\.", "N(?i:ow)", "O(?i:nce)",
     "O(?i:ne)", "O(?i:ther)", "O(?i:ur)", "S(?i:he)", "S(?i:ince)", "S(?i:o)", "S(?i:ome)", "S(?i:uch)",
     "T(?i:hat)", "T(?i:he)", "T(?i:heir)", "T(?i:hen)", "T(?i:here)", "T(?i:hese)", "T(?i:hey)", "T(?i:his)",
     "W(?i:e)", "W(?i:hen)", "W(?i:hile)", "W(?i:hat)", "Y(?i:et)", "Y(?i:ou)"], key=len, reverse=True))
                + f"|{SGML})")
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00AD]+))+"
THING = (rf"(?:[dDoOlL]{APOSETC}{LD})?{LD}+(?:[-_\u058A\u2010\u2011](?:[dDoOlL]{APOSETC}{LD})?{LD}+)*")
THINGA = rf"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
REDAUX = rf"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SREDAUX = rf"(?i:n){APOSETC}(?i:t)"
APOWORD = [
    rf"{APOS}(?i:n){APOS}?", rf"[lLdDjJ]{APOS}", rf"(?i:Dunkin){APOS}", rf"(?i:somethin){APOS}", rf"(?i:ol){APOS}",
    rf"{APOS}(?i:em)", rf"[A-HJ-XZn]{APOSETC}{LET}{{2}}{LET}*", rf"{APOS}[2-9]0(?i:s)", rf"{APOS}(?i:till?)",
    rf"{LET}{LET}*[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{LET}*", rf"{APOS}(?i:cause)", r"(?i:cont'd)\.?",
    r"(?i:'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", rf"(?i:O){APOSETC}(?i:o)",
]
FILENAME = (rf"(?:{LETTER}|\d)+(?:[.](?:{LETTER}|\d)+)*[.]" + _ci(
    "bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|"
    "ps|py|sql|tar|txt|wav|x|xml|zip"))
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}"
         r"[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
MISCSYMBOL = (r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
              r"\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E"
              r"\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023"
              r"\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF"
              r"\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
SMILEY_CHARS = r"[\-\^x=~<>']"
ASIANSMILEY = [r"[\^x=~<>]\.\[\^x=~<>\]", rf"{SMILEY_CHARS}_{SMILEY_CHARS}",
               rf"\({SMILEY_CHARS}[_.]?{SMILEY_CHARS}\)", r"\([\^x=~<>']-[\^x=~<>'`]\)"]
URL_END = r"[^ \t\n\f\r\"<>|.!?(){},-]"
FULLURL = rf"(?i:https?)://[^ \t\n\f\r\"<>|(){{}}]+{URL_END}"
LIKELYURL = (r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+"
             rf"\.)+(?i:com|net|org|edu)))(?:/[^ \t\n\f\r\"<>|()]+{URL_END})?")
EMAIL = (r"(?:&(?i:lt);|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
         r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+)(?:&(?i:gt);|>)?")


# ------------------------------------------------------------------------------------------------- actions
def _quotes(left: bool) -> Callable[[str], str]:
    """PTB3 LaTeX quotes: ' and \" become ` and `` when the quote probably opens, else ' and ''."""
    def apply(tok: str) -> str:
        tok = re.sub(r"&apos;|'", "`" if left else "'", tok)  # case-sensitive, unlike the lexer
        tok = re.sub(r"\"|&quot;", "``" if left else "''", tok)
        tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
        tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
        tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
        return re.sub("[\u0094\u201D\u00BB]", "''", tok)
    return apply


def _soft(tok: str) -> str:
    """Soft hyphens are dropped; a token of soft hyphens only becomes "-"."""
    return tok.replace("\u00AD", "") or "-"


def _amp(tok: str) -> str:
    return re.sub(r"(?i:&amp;)", "&", tok)


def _nbsp(tok: str) -> str:
    return tok.replace(" ", "\u00A0")


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


def _currency(tok: str) -> str:
    tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok)


def _fractions(tok: str) -> str:
    for src, dst in (("\u00BC", "1/4"), ("\u00BD", "1/2"), ("\u00BE", "3/4"), ("\u2153", "1/3"), ("\u2154", "2/3")):
        tok = tok.replace(src, dst)
    return tok


def _const(value: str) -> Callable[[str], str]:
    return lambda _tok: value


def _dashes(tok: str) -> str:
    return "--" if 3 <= len(tok) <= 4 else tok


@dataclass(frozen=True)
class Rule:
    """One lexer rule: patterns (alternatives; the longest counts), optional trailing context, action.

    `kind`: "token" emits `action(text)`; "skip" emits nothing; "newline" emits a line break; "pushback"
    keeps the first `len(text) - back` characters; "dup" emits the text and re-reads its final period;
    "acronym" is the sentence-final acronym rule ("I." gives "I" + "."; longer ones are duplicated).
    """

    patterns: tuple[re.Pattern[str], ...]
    has_ctx: bool = False
    kind: str = "token"
    action: Callable[[str], str] = str
    back: int = 0


def _rule(pattern: str | list[str], ctx: str | None = None, kind: str = "token",
          action: Callable[[str], str] = str, back: int = 0) -> Rule:
    alts = pattern if isinstance(pattern, list) else [pattern]
    tail = "" if ctx is None else f"(?=({ctx}))"
    return Rule(tuple(re.compile(f"({a}){tail}") for a in alts), ctx is not None, kind, action, back)


ANY = r"[\s\S]"
RULES: tuple[Rule, ...] = (
    _rule(r"(?i:c)[+][+]"), _rule(r"(?i:c|f)#"),
    _rule(r"(?i:cannot)", kind="pushback", back=3), _rule(r"(?i:'twas)", kind="pushback", back=3),
    _rule(r"(?i:'tis)", kind="pushback", back=2),
    _rule(_ci("gonna|gotta|lemme|gimme|wanna"), kind="pushback", back=2),
    _rule(SGML, action=_nbsp), _rule(r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", action=_const("--")),
    _rule(SPAMP, action=_amp), _rule(r"&(?:" + _ci("HT|TL|UR|LR|QC|QL|QR|odq|cdq") + r"|#[0-9]+);"),
    _rule(WORD, REDAUX, action=_soft), _rule(r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*", SREDAUX, action=_soft),
    _rule(WORD, action=_soft), _rule(APOWORD), _rule(rf"(?i:y){APOS}", LET),
    _rule(FULLURL), _rule(LIKELYURL), _rule(EMAIL), _rule([r"@[a-zA-Z_][a-zA-Z_0-9]*", rf"#{LETTER}+"]),
    _rule(REDAUX, r"[^A-Za-z]", action=_quotes(False)), _rule(SREDAUX, r"[^A-Za-z]", action=_quotes(False)),
    _rule(r"\d{1,2}[\-/]\d{1,2}[\-/]\d{2,4}"), _rule(rf"[\-+]?(?:{NUM})", action=_soft),
    _rule(r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _rule(r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", action=_nbsp),
    _rule(r"[\u00BC\u00BD\u00BE\u2153-\u215E]", action=_fractions),
    _rule([r"-" + _ci("RRB|LRB|RCB|LCB|RSB|LSB") + "-", r"(?i:C\.D\.s)", r"(?i:pro|anti)-",
           rf"(?i:S)(?:&|{SPAMP})(?i:P-500)", rf"(?i:S)(?:&|{SPAMP})(?i:Ls)", rf"(?i:Cap){APOS}(?i:n)",
           rf"(?i:c){APOS}(?i:est)"], action=_amp),
    _rule(r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
    _rule(r"[A-Z]*\$|#"),
    _rule(r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", action=_currency),
    _rule(rf"{ACRO}\.", f"{SPACENL}+{ACRONYM_NEXT}{SPACENL}", kind="acronym"),
    _rule(ABBREV3, rf"{SPACENL}?\d"), _rule(r"(?:(?i:pt)[eyEY]|(?i:co))\.", rf"{SPACE}(?i:ltd|lim)"),
    _rule(ABBREV1, SENTEND, kind="dup"), _rule(ABBREV1, ANY + ANY), _rule(ABBREV1, kind="dup"),
    _rule(rf"{ABBREV4}\."), _rule(ABBREV4, SPACE), _rule(ACRO, SPACENL),
    _rule(rf"{APOS}[0-9][0-9]", SPACENL), _rule(FILENAME, rf"{SPACENL}|[.?!,]"),
    _rule(rf"{WORD}\.", r"[,;:\u3001]", action=_soft), _rule(PHONE, action=lambda t: _parens(_nbsp(t))),
    _rule(r"\"|&(?i:quot);", r"[A-Za-z0-9$]", action=_quotes(True)), _rule(r"\"|&(?i:quot);", action=_quotes(False)),
    _rule(r"\x7f", kind="skip"), _rule(r"<|&(?i:lt);", action=_const("<")), _rule(r">|&(?i:gt);", action=_const(">")),
    _rule(r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]", r"[^A-Za-z0-9]", action=_parens),
    _rule(ASIANSMILEY, action=_parens),
    _rule(r"\{", action=_const("-LCB-")), _rule(r"\}", action=_const("-RCB-")),
    _rule(r"\[", action=_const("-LSB-")), _rule(r"\]", action=_const("-RSB-")),
    _rule(r"\(", action=_const("-LRB-")), _rule(r"\)", action=_const("-RRB-")),
    _rule(r"-+", action=_dashes), _rule(r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", action=_const("...")),
    _rule(r"@+|#+|_+"), _rule(r"\*+|(?:\\\*){1,3}"), _rule(r"[,;:\u3001]"), _rule(r"[?!]+"),
    _rule("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"), _rule("="), _rule("/"),
    _rule(rf"{HTHING}\.", r"[,;:\u3001]", action=_soft), _rule(HTHING, action=_soft),
    _rule(rf"{THING}\.", r"[,;:\u3001]"), _rule(THING),
    _rule(rf"{THINGA}\.", r"[,;:\u3001]", action=_amp), _rule(THINGA, action=_amp),
    _rule("'", r"[A-Za-z][^ \t\n\r\u00A0]", action=_quotes(True)),
    _rule(REDAUX, action=_quotes(False)), _rule(SREDAUX, action=_quotes(False)),
    _rule([APOS, "''", "[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A"
           "\u00AB\u00BB]{1,2}"], action=_quotes(False)),
    _rule("<<|>>"), _rule(MISCSYMBOL),
    _rule(f"\x00|{SPACE}+|[\u200B\u200E\u200F\uFEFF]", kind="skip"), _rule(NEWLINE, kind="newline"),
    _rule(r"&(?i:nbsp);", kind="skip"), _rule(".", kind="skip"),  # untokenizable characters are deleted
)
_PLAIN = re.compile(r"[A-Za-z]+(?=[ \t\n]|\Z)")
_ASSIMILATIONS = frozenset({"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"})


# ---------------------------------------------------------------------------------------------------- lexer
def _longest(text: str, pos: int) -> tuple[Rule, int, int]:
    """The rule the JFlex scanner picks at `pos`: (rule, length of its text, total length with context)."""
    best: tuple[Rule, int, int] | None = None
    for rule in RULES:
        for pattern in rule.patterns:
            m = pattern.match(text, pos)
            if m is None:
                continue
            size = m.end(1) - pos
            total = size + (len(m.group(2)) if rule.has_ctx else 0)
            if total > 0 and (best is None or total > best[2]):
                best = (rule, size, total)
    assert best is not None  # the catch-all rule matches any character but "\n", which NEWLINE matches
    return best


def lex(text: str) -> list[str]:
    """PTBLexer 3.4.1 tokens of `text` (not lower-cased); "\\n" stands for each line break."""
    tokens: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        plain = _PLAIN.match(text, pos)
        if plain and plain.group().lower() not in _ASSIMILATIONS:
            tokens.append(plain.group())
            pos = plain.end()
            continue
        rule, size, _ = _longest(text, pos)
        word = text[pos:pos + size]
        pos += size
        if rule.kind == "token":
            tokens.append(rule.action(word))
        elif rule.kind == "newline":
            tokens.append(NL)
        elif rule.kind == "pushback":
            tokens.append(word[:size - rule.back])
            pos -= rule.back
        elif rule.kind == "dup":
            tokens.append(word)
            pos -= 1
        elif rule.kind == "acronym":
            tokens.append(word[:1] if size == 2 else word)
            pos -= 1
    return tokens


def python_tokenize_lines(lines: Sequence[str]) -> list[str]:
    """`-preserveLines -lowerCase` output for `lines` joined by newlines: one token string per line."""
    out: list[list[str]] = [[]]
    for tok in lex("\n".join(lines)):
        if tok == NL:
            out.append([])
        else:
            out[-1].append(tok.lower())
    return [" ".join(toks) for toks in out]


# ----------------------------------------------------------------------------------------------- the jar
@lru_cache(maxsize=1)
def find_jar() -> Path | None:
    """The CoreNLP 3.4.1 jar, when it and `java` are available: $VLMKIT_PTB_JAR, else pycocoevalcap's."""
    if shutil.which("java") is None:
        return None
    env = os.environ.get("VLMKIT_PTB_JAR")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import pycocoevalcap  # noqa: PLC0415 - optional, only to find its jar
    except ImportError:
        return None
    jar = Path(pycocoevalcap.__file__).parent / "tokenizer" / JAR_NAME
    return jar if jar.is_file() else None


def java_tokenize_lines(lines: Sequence[str], jar: Path) -> list[str]:
    """Run the official tokenizer exactly as pycocoevalcap does (a temp file, one caption per line)."""
    with tempfile.TemporaryDirectory(prefix="vlmkit-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes("\n".join(lines).encode())
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               str(path)]
        try:
            done = subprocess.run(cmd, capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise VlmkitError(f"the PTB tokenizer ({jar}) failed: {e}") from None
    return done.stdout.decode().split("\n")


def tokenizer_name() -> str:
    """Which PTB tokenizer `tokenize_captions` uses here."""
    jar = find_jar()
    return f"java:{jar}" if jar else "python (vlmkit re-implementation of CoreNLP 3.4.1 PTBTokenizer)"


def tokenize_captions(captions: Mapping[str, Sequence[str]], backend: str = "auto") -> dict[str, list[str]]:
    """pycocoevalcap's `PTBTokenizer.tokenize`: {id: [caption, ...]} -> {id: [tokenized caption, ...]}.

    All captions are tokenized together in dict order (a token may depend on the next line, as in the jar).
    `backend`: "auto" (java when available), "java" or "python".
    """
    ids = [k for k, caps in captions.items() for _ in caps]
    lines = [c.replace("\n", " ") for caps in captions.values() for c in caps]
    jar = find_jar() if backend in ("auto", "java") else None
    if backend == "java" and jar is None:
        raise VlmkitError("the java PTB tokenizer needs `java` on PATH and the CoreNLP 3.4.1 jar "
                          "(pip install pycocoevalcap, or set VLMKIT_PTB_JAR)")
    if jar is None:
        lines = [re.sub(NEWLINE, " ", line) for line in lines]
    tokenized = java_tokenize_lines(lines, jar) if jar else python_tokenize_lines(lines)
    out: dict[str, list[str]] = {k: [] for k in captions}
    for k, line in zip(ids, tokenized):
        out[k].append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    return out
