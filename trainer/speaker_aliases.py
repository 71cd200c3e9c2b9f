"""Speaker-name aliases: the spellings the scripts use for one character, mapped to one canonical name.

Chosen from the speaker counts of the Game of Thrones scripts: a character who appears under several
spellings with many lines ("sam" 399 and "sam tarly" 157; "sandor" 129 and "sandor clegane" 239) gets one
name here, so the model and the bot's speaker list see one character, not two. Short first names are
mapped only where the scripts use them for one character; ambiguous ones ("lyanna", "rickard", "khal",
"maester") are left alone. Keys are lower case with single spaces; a name that is not listed is simply
title-cased ("jon snow" -> "Jon Snow").

Add a line here to merge another pair; ``tests/test_corpus.py`` checks that no variant is listed twice.
"""

from __future__ import annotations

# canonical name -> the spellings (lower case) that mean that character
SPEAKER_ALIASES: dict[str, tuple[str, ...]] = {
    "Samwell Tarly": ("sam", "sam tarly", "samwell", "samwell tarly"),
    "Petyr Baelish": ("petyr", "littlefinger"),
    "Sandor Clegane": ("sandor", "the hound", "hound"),
    "Davos Seaworth": ("davos", "ser davos"),
    "Brienne of Tarth": ("brienne",),
    "Jorah Mormont": ("ser jorah", "jorah"),
    "Varys": ("lord varys",),
    "Tormund Giantsbane": ("tormund",),
    "Podrick Payne": ("podrick", "pod"),
    "Daario Naharis": ("daario",),
    "Roose Bolton": ("roose",),
    "Renly Baratheon": ("renly",),
    "Loras Tyrell": ("loras",),
    "Alliser Thorne": ("alliser", "alliser thorn", "alliser throne", "ser alliser"),
    "Barristan Selmy": ("barristan", "ser barristan"),
    "Beric Dondarrion": ("beric",),
    "Walder Frey": ("walder",),
    "Lancel Lannister": ("lancel",),
    "Lysa Arryn": ("lysa",),
    "Viserys Targaryen": ("viserys",),
    "Janos Slynt": ("janos", "janos slunt"),
    "Jeor Mormont": ("jeor", "lord mormont"),
    "Hizdahr zo Loraq": ("hizdahr", "hizdahr zo loraq"),
    "Pycelle": ("grand maester pycelle", "grand maester pyrcelle", "maester pycelle", "maester pycell"),
    "Maester Luwin": ("luwin",),
    "Maester Aemon": ("aemon",),
    "Kevan Lannister": ("kevan",),
    "Benjen Stark": ("benjen",),
    "Robin Arryn": ("robin",),
    "Mace Tyrell": ("mace",),
    "Myrcella Baratheon": ("myrcella",),
    "Khal Drogo": ("drogo",),
    "Brynden Tully": ("brynden", "blackfish"),
    "Edmure Tully": ("edmure",),
    "Oberyn Martell": ("oberyn",),
    "Dolorous Edd": ("edd", "dolorous"),
    "Rodrik Cassel": ("rodrik", "ser rodrik"),
    "Syrio Forel": ("syrio",),
    "Jory Cassel": ("jory",),
    "Qhorin Halfhand": ("qhorin",),
    "Mance Rayder": ("mance",),
    "Maester Wolkan": ("wolkan",),
}


def alias_lookup() -> dict[str, str]:
    """Every listed spelling (lower case) mapped to its canonical name."""
    return {variant: canonical for canonical, variants in SPEAKER_ALIASES.items() for variant in variants}
