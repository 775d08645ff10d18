"""spaCy's English tokenizer special cases, as ``llm.data.words`` needs them.

A special case is a whole chunk (between affixes) that spaCy splits its own way: abbreviations
that keep their period, contractions split at the clitic ("don't" → "do" "n't", also spelled with
’ or without an apostrophe: "dont" → "do" "nt"), a few words kept whole ("o'clock", "'em"), and
emoticons. The tables list the base words spaCy 3.8's English exceptions pair with each clitic.
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


ABBREVIATIONS = _words("""
Adm. Bros. Co. co. Corp. D.C. Dr. E.G. E.g. e.g. Gen. Gov. I.E. I.e. i.e. Inc. Jr. Ltd. Messrs.
Mr. Mrs. Ms. Mt. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. a.m. p.m. Jan. Feb. Mar. Apr. Jun. Jul.
Aug. Sep. Sept. Oct. Nov. Dec. Ak. Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill.
Ind. Kan. Kans. Ky. La. Mass. Md. Mich. Minn. Miss. Mo. Mont. N.C. N.D. N.H. N.J. N.M. N.Y. Neb.
Nebr. Nev. Okla. Ore. Pa. S.C. Tenn. Va. Wash. Wis. ä. ö. ü. °C. °F. °K. °c. °f. °k. and/or w/o
C++ '' ’’
""")
EMOTICONS = _words("""
:) :)) :))) :( :(( :((( :() :-) :-)) :-))) :-( :-(( :-((( (: ): (-: )-: ;) ;-) (; :D :-D ;D ;-D
:P :-P :p :-p :O :-O :o :-o :/ :-/ =) =( =/ =] =[ =| =D =3 :3 :-3 :* :-* :| :-| :] :-] :} :-} :>
:-> :x :-x :X :-X 8) 8-) 8D 8-D <3 </3 <33 <333 ^_^ ^__^ -_- -__- o_o O_O o_O O_o 0_0 0_o o.O
O.o o.o O.O 0.0 o.0 @_@ ;_; (^_^) (-_-) (*_*) (>_<) [: [= ]= [-: :o) >:( >:o :0 :1
""")
WHOLE = _words("""
'cause 'cos 'coz 'cuz 'bout 'em 'nuff 's 'd 'll 're doin' goin' havin' lovin' nothin' nuthin'
somethin' ma'am o'clock ol'
""")

_NT = "ai are ca could dare did do does had has have is may might must need ought sha should "
_NT += "was were wo would"
_VE = "could how i might must not should there these they those we what when where who why "
_VE += "would you"
_D_LL = "he how i it she that there these they this those we what when where who why you"
_S = "he how it let she that there this what when where who why"
_RE = "how there these they those we what when where who why you"
_NT_VE = "ca could did do does had may might must need ought sha should wo would"
# clitics as (spelled with an apostrophe, the bases), and the bases that take it without one
# (spaCy leaves out real words: "shed", "hell", "ill", "well", "were", "its", "lets").
CLITICS: list[tuple[tuple[str, ...], str, str]] = [
    (("n't",), _NT, _NT),
    (("'ve",), _VE, _VE),
    (("'d",), _D_LL, _D_LL.replace("she ", "")),
    (("'ll",), _D_LL, "it how where why they that those this who what when these you there"),
    (("'s",), _S, _S.replace("it ", "").replace("let ", "")),
    (("'re",), _RE, "how there these they those what when where why you"),
    (("'m",), "i", "i"),
    (("'m", "a"), "i", "i"),
    (("n't", "'ve"), _NT_VE, _NT_VE),
    (("'d", "'ve"), _D_LL, _D_LL),
    (("'ll", "'ve"), _D_LL, _D_LL),
]
SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"]}
SPLIT_WORDS |= {"c'mon": ["c'm", "on"], "y'all": ["y'", "all"]}


def _cased(words: list[str]) -> list[list[str]]:
    """The lowercase form and the capitalised one ("I" for a lone i), as spaCy lists them."""
    first = words[0]
    upper = first.upper() if first in ("i", "i'") else first[:1].upper() + first[1:]
    return [words, [upper, *words[1:]]]


def _add(table: dict[str, list[str]], words: list[str]) -> None:
    for form in _cased(words):
        for mark in ("'", "’"):
            spelled = [w.replace("'", mark) for w in form]
            table["".join(spelled)] = spelled


def special_cases() -> dict[str, list[str]]:
    """Chunk → its tokens, for every special case."""
    table: dict[str, list[str]] = {}
    for word in ABBREVIATIONS + EMOTICONS:
        table[word] = [word]
    for word in WHOLE:
        _add(table, [word])
    for word, parts in SPLIT_WORDS.items():
        _add(table, parts)
        table[word], table[word.capitalize()] = parts, _cased(parts)[1]
    for clitics, with_mark, without in CLITICS:
        for base in with_mark.split():
            _add(table, [base, *clitics])
        for base in without.split():
            for form in _cased([base, *(c.replace("'", "") for c in clitics)]):
                table["".join(form)] = form
    table |= {f"{c}.": [f"{c}."] for c in "abcdefghijklmnopqrstuvwxyz"}
    table |= {f"{h}{m}.": [f"{h}{m}."] for h in range(1, 13) for m in ("a.m", "p.m")}
    return table
