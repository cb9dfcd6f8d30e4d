#!/usr/bin/env python3
"""Deterministic generator of a "legacy" welfare-beneficiary CSV export (Web Distretti style).

Snodo has to ingest registry dumps produced by a SQL Server application (Web Distretti, Comune di
Genova). Those dumps are ``;``-separated, CRLF-terminated, Windows-1252 encoded, quote only when
needed and carry the usual data-entry noise. This script produces such a file, of any size,
byte-identical for the same ``--seed``, together with an optional JSON sidecar (``--expect``)
listing the rows that a correct importer must reject and why.

Usage::

    gen_legacy_csv.py --rows N --seed S --out PATH [--bad-rate R] [--encoding ENC]
                      [--expect PATH.json] [--ref-dir DIR]
    gen_legacy_csv.py --self-test

ENC is cp1252 (default), utf-8, utf-8-sig (with BOM) or iso-8859-1 (the € and ’ style
characters, which Latin-1 lacks, are then written as EUR, ' and so on). The reference tables
(ANPR_archivio_comuni.csv, ANPR_stati_esteri.csv) are read from --ref-dir, default
$SNODO_REF_DIR or the repository's own copy in mappings/comuni/.

The checked-in fixtures under tests/fixtures/csv/ were made with::

    gen_legacy_csv.py --rows 1000 --seed 42 --bad-rate 0.02 \
        --out tests/fixtures/csv/assistiti_legacy.csv \
        --expect tests/fixtures/csv/assistiti_legacy.expect.json
    gen_legacy_csv.py --rows 20 --seed 78 --bad-rate 0 --encoding utf-8-sig \
        --out tests/fixtures/csv/assistiti_small_utf8bom.csv
    gen_legacy_csv.py --rows 20 --seed 78 --bad-rate 0 --encoding iso-8859-1 \
        --out tests/fixtures/csv/assistiti_latin1.csv

Seed 78 was picked for the 20-row files because it covers every feature (€ and ’, quoted
``;``/``""``/line breaks, foreign birthplace, empty and omocodic CF, ``00xxx`` CAP, accents,
stray spaces); for Latin-1 the same rows are written with € -> EUR and ’ -> '.

Design notes (why the code looks the way it does):

* **Streaming.** Rows are produced and written one at a time (in small batches); only the
  reference tables (comuni, foreign states, names, date strings) live in memory, so memory is
  flat whatever ``--rows`` is.
* **Speed.** Everything that does not depend on the row is precomputed once: the date strings
  and codice-fiscale date fragments of every day 1925-2024, the CF codes of every name, and the
  partial check-character sums of every fragment, so a row's CF check character is one addition
  and one modulo. Randomness only uses ``Random.random()`` (cheaper than ``choice``/``randrange``,
  and its output for a given seed is stable across CPython versions). Zero-padded numbers
  come from lookup tables, not format specs, and cp1252 output is written through the
  Latin-1 codec (see ``wire_encoding``).
* **Determinism.** One ``random.Random`` per concern (rows, bad-row schedule, note pool), all
  seeded from ``--seed``; no set/dict iteration whose order could vary; no wall-clock input.
* **Bad rows.** ``round(rows * bad_rate)`` rows are bad. They are spread uniformly by splitting
  the file into that many equal segments and picking one random row inside each segment; kinds
  are dealt in shuffled rounds of the seven kinds, so every kind appears (counts differ by at
  most one). Each bad row starts as a fully valid row and receives exactly one defect.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime as dt
import io
import json
import os
import random
import re
import sys
import time
import unicodedata
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

COLUMNS = (
    "id_anagrafica", "cognome", "nome", "codice_fiscale", "sesso", "data_nascita",
    "comune_nascita", "cittadinanza", "indirizzo", "cap", "comune_residenza", "isee",
    "data_isee", "iban", "telefono", "note",
)
FIRST_ID = 100001

BAD_KINDS = (
    "invalid_date",
    "invalid_decimal",
    "bad_cf_check",
    "missing_required",
    "malformed_row",
    "oversized_field",
    "birthplace_not_valid_at_birth",
)
MAX_LISTED_BAD_IDS = 1000
OVERSIZED_NOTE_LEN = 5000

#: Encoding names accepted on the command line -> Python codec name.
ENCODINGS = {
    "cp1252": "cp1252", "windows-1252": "cp1252",
    "utf-8": "utf-8", "utf8": "utf-8",
    "utf-8-sig": "utf-8-sig",
    "iso-8859-1": "iso-8859-1", "latin-1": "iso-8859-1", "latin1": "iso-8859-1",
}

#: Directory holding ANPR_archivio_comuni.csv and ANPR_stati_esteri.csv (``--ref-dir``).
DEFAULT_REF_DIR = Path(
    os.environ.get("SNODO_REF_DIR", Path(__file__).resolve().parent.parent / "mappings" / "comuni")
)

BIRTH_FIRST = dt.date(1925, 1, 1)
BIRTH_LAST = dt.date(2024, 12, 31)
ISEE_FIRST = dt.date(2019, 1, 1)  # DSU/ISEE dates are recent; older ones would have expired
GENOVA = "D969"
ROMA = "H501"

# Share of rows by birthplace (cumulative thresholds on one random draw).
P_BORN_GENOVA = 0.40
P_BORN_FREQUENT = 0.58   # + 18 % Ligurian towns and big cities of internal migration
P_BORN_ANY_COMUNE = 0.92  # + 34 % any comune valid at the birth date; the rest (8 %) abroad

P_FEMALE = 0.52
P_EMPTY_CF = 0.05
P_OMOCODIA = 0.02
P_ISEE_EMPTY = 0.30
P_IBAN_EMPTY = 0.50
P_PHONE_EMPTY = 0.12
P_NOTE_EMPTY = 0.60
P_CAP_LEADING_ZERO = 0.03
P_RESIDENT_OTHER_METRO = 0.05

# ---------------------------------------------------------------------------------------------
# Codice fiscale
# ---------------------------------------------------------------------------------------------

MONTH_LETTERS = "ABCDEHLMPRST"
CHECK_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VOWELS = frozenset("AEIOU")

_ODD_LETTER_VALUES = {
    "A": 1, "B": 0, "C": 5, "D": 7, "E": 9, "F": 13, "G": 15, "H": 17, "I": 19, "J": 21,
    "K": 2, "L": 4, "M": 18, "N": 20, "O": 11, "P": 3, "Q": 6, "R": 8, "S": 12, "T": 14,
    "U": 16, "V": 10, "W": 22, "X": 25, "Y": 24, "Z": 23,
}
#: Odd (1-based) positions: a digit weighs like the letter with the same index (0/A, 1/B, ...).
CF_ODD = dict(_ODD_LETTER_VALUES)
CF_ODD.update({str(d): _ODD_LETTER_VALUES[chr(ord("A") + d)] for d in range(10)})
#: Even positions: digits 0-9 -> 0-9, letters A-Z -> 0-25.
CF_EVEN = {chr(ord("A") + i): i for i in range(26)}
CF_EVEN.update({str(d): d for d in range(10)})

OMOCODIA_LETTERS = "LMNPQRSTUV"  # digit d -> OMOCODIA_LETTERS[d]
#: 0-based positions of the digits that omocodia replaces, in replacement order (right to left).
OMOCODIA_POSITIONS = (14, 13, 12, 10, 9, 7, 6)


def cf_letters(text: str) -> str:
    """Upper-case A-Z letters of a name as the CF sees them.

    Accents are dropped (NICOLÒ -> NICOLO, KOÇI -> KOCI) and apostrophes/spaces ignored
    (D'ANGELO -> DANGELO), which is what the Agenzia delle Entrate software does.
    """
    decomposed = unicodedata.normalize("NFD", text.upper())
    return "".join(ch for ch in decomposed if "A" <= ch <= "Z")


def surname_code(surname: str) -> str:
    """Three letters of the surname: its consonants, then its vowels, then X padding."""
    letters = cf_letters(surname)
    consonants = [c for c in letters if c not in VOWELS]
    vowels = [c for c in letters if c in VOWELS]
    return ("".join(consonants + vowels) + "XXX")[:3]


def name_code(name: str) -> str:
    """Three letters of the first name.

    Same as the surname, except that a name with four or more consonants takes the 1st, 3rd
    and 4th consonant (GIANFRANCO -> GFR), so that common names differ more.
    """
    letters = cf_letters(name)
    consonants = [c for c in letters if c not in VOWELS]
    if len(consonants) >= 4:
        return consonants[0] + consonants[2] + consonants[3]
    vowels = [c for c in letters if c in VOWELS]
    return ("".join(consonants + vowels) + "XXX")[:3]


def cf_date_code(birth: dt.date, female: bool) -> str:
    """YYMDD: two-digit year, month letter, day (+40 for women)."""
    day = birth.day + (40 if female else 0)
    return f"{birth.year % 100:02d}{MONTH_LETTERS[birth.month - 1]}{day:02d}"


def cf_partial_sum(fragment: str, first_position: int) -> int:
    """Check-character contribution of ``fragment`` placed at 1-based ``first_position``.

    The check sum is additive, so precomputing it per fragment (name code, date code, place
    code) makes the per-row check character one sum and one modulo.
    """
    total = 0
    for offset, ch in enumerate(fragment):
        position = first_position + offset
        total += CF_ODD[ch] if position % 2 == 1 else CF_EVEN[ch]
    return total


def cf_check_char(first15: str) -> str:
    """Check character of the first 15 CF characters (odd/even tables, sum mod 26)."""
    return CHECK_LETTERS[cf_partial_sum(first15, 1) % 26]


def build_cf(surname: str, name: str, birth: dt.date, female: bool, place: str) -> str:
    """Full 16-character personal codice fiscale (no omocodia)."""
    first15 = surname_code(surname) + name_code(name) + cf_date_code(birth, female) + place
    return first15 + cf_check_char(first15)


def apply_omocodia(cf: str, level: int) -> str:
    """Replace the ``level`` rightmost substitutable digits by letters and fix the check char.

    This is what the Agenzia does when two people would get the same code: level 1 replaces
    the last place digit, level 7 every digit.
    """
    chars = list(cf[:15])
    for position in OMOCODIA_POSITIONS[:level]:
        chars[position] = OMOCODIA_LETTERS[int(chars[position])]
    first15 = "".join(chars)
    return first15 + cf_check_char(first15)


# ---------------------------------------------------------------------------------------------
# IBAN
# ---------------------------------------------------------------------------------------------

def iban_digits(text: str) -> str:
    """ISO 13616 letter expansion: A=10 ... Z=35, digits unchanged."""
    return "".join(str(int(ch, 36)) for ch in text)


def iban_check_digits(country: str, bban: str) -> str:
    """Two check digits: 98 - (BBAN + country + '00', letters expanded) mod 97."""
    return f"{98 - int(iban_digits(bban + country + '00')) % 97:02d}"


def iban_is_valid(iban: str) -> bool:
    """Mod-97 test of a complete IBAN (the whole rearranged number must be 1 mod 97)."""
    return int(iban_digits(iban[4:] + iban[:4])) % 97 == 1


#: Italian banks (ABI) seen in Genova; Carige (06175) is the local one, hence the repetition.
BANK_ABI = (
    "06175", "06175", "06175", "03069", "03069", "03069", "02008", "02008", "05034",
    "07601", "07601", "03032", "01030", "05387", "03015", "03062", "08487", "05696",
)


# ---------------------------------------------------------------------------------------------
# Reference data: comuni and foreign states
# ---------------------------------------------------------------------------------------------

def find_reference_file(ref_dir: Path, name: str) -> Path:
    """Path of an ANPR reference file, with a clear error if it is missing."""
    path = ref_dir / name
    if not path.is_file():
        raise SystemExit(f"reference file {path} not found (use --ref-dir or SNODO_REF_DIR)")
    return path


def merge_intervals(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Merge overlapping or contiguous day intervals.

    A Belfiore code usually has several ANPR rows (renames, province changes) that follow each
    other day by day; merged, most codes have a single interval and the validity test is cheap.
    """
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def load_comuni(path: Path) -> dict[str, tuple[tuple[int, int], ...]]:
    """Belfiore code -> validity intervals, as day offsets from BIRTH_FIRST.

    A code is valid on a date if ANY of its rows is (DATAISTITUZIONE <= date <= DATACESSAZIONE).
    Rows whose code is not a proper ``A999`` Belfiore code (the 28 ``ND`` rows) are ignored.
    """
    base = BIRTH_FIRST.toordinal()
    day_of: dict[str, int] = {}  # ISO date -> day offset; few distinct dates, many rows

    def day_offset(iso: str) -> int:
        offset = day_of.get(iso)
        if offset is None:
            offset = day_of[iso] = dt.date.fromisoformat(iso).toordinal() - base
        return offset

    raw: dict[str, list[tuple[int, int]]] = {}
    belfiore = re.compile(r"[A-Z]\d{3}")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        i_start, i_end, i_code = (header.index(c) for c in
                                  ("DATAISTITUZIONE", "DATACESSAZIONE", "CODCATASTALE"))
        for row in reader:
            code = row[i_code]
            if belfiore.fullmatch(code):
                raw.setdefault(code, []).append((day_offset(row[i_start]),
                                                 day_offset(row[i_end])))
    return {code: merge_intervals(raw[code]) for code in sorted(raw)}


def parse_dmy(text: str) -> dt.date:
    """dd/mm/yyyy -> date (the stati esteri file uses this format)."""
    day, month, year = text.split("/")
    return dt.date(int(year), int(month), int(day))


def load_stati_esteri(path: Path) -> tuple[dict, dict]:
    """Read the foreign-states table.

    Returns ``(birth_states, citizenships)``: ``birth_states`` maps CODAT (``Zxxx``, usable in a
    CF) -> (CODISTAT, validity interval) for the states usable as birthplace; ``citizenships``
    maps CODISTAT -> denomination for the states usable as citizenship.
    """
    base = BIRTH_FIRST.toordinal()
    birth_states: dict[str, tuple[str, tuple[int, int]]] = {}
    citizenships: dict[str, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            codistat = row["CODISTAT"].strip()
            codistat = codistat.zfill(3) if codistat else ""  # keep/restore leading zeros
            if row["CITTADINANZA"] == "S" and codistat:
                citizenships[codistat] = row["DENOMINAZIONE"]
            codat = row["CODAT"].strip()
            if row["NASCITA"] == "S" and re.fullmatch(r"Z\d{3}", codat):
                start = parse_dmy(row["DATAINIZIOVALIDITA"]).toordinal() - base
                end = parse_dmy(row["DATAFINEVALIDITA"]).toordinal() - base
                birth_states[codat] = (codistat, (start, end))
    return birth_states, citizenships


def is_valid_on(intervals: tuple[tuple[int, int], ...], day: int) -> bool:
    """True if ``day`` falls in one of the intervals."""
    for start, end in intervals:
        if start <= day <= end:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Names, places and other vocabularies
# ---------------------------------------------------------------------------------------------

ITALIAN_SURNAMES = (
    # the most common in Italy
    "ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO", "RICCI", "MARINO",
    "GRECO", "BRUNO", "GALLO", "CONTI", "DE LUCA", "MANCINI", "COSTA", "GIORDANO", "RIZZO",
    "LOMBARDI", "MORETTI", "BARBIERI", "FONTANA", "SANTORO", "MARIANI", "RINALDI", "CARUSO",
    "FERRARA", "GALLI", "MARTINI", "LEONE", "LONGO", "GENTILE", "MARTINELLI", "VITALE",
    "LOMBARDO", "SERRA", "COPPOLA", "DE SANTIS", "MARCHETTI", "LA ROSA", "LO BIANCO",
    "DI STEFANO", "LO PRESTI", "MUSUMECI", "SCUDERI",
    # typically Genoese / Ligurian
    "PARODI", "CANEPA", "BRUZZONE", "PICASSO", "TRAVERSO", "REPETTO", "CAMBIASO", "PASTORINO",
    "PESCE", "OTTONELLO", "MOLINARI", "OLIVIERI", "CAVIGLIA", "DAMONTE", "PIAGGIO",
    "GHIGLIONE", "FERRANDO", "MERLO", "DORIA", "DE FERRARI", "ODDONE", "BOZZO", "PODESTÀ",
    # apostrophes and final accents (southern surnames are common in Genova)
    "D'ANGELO", "D'AMICO", "D'ALESSANDRO", "DELL'ACQUA", "D'URSO", "DELL'ORTO", "D'AGOSTINO",
    "ZAPPALÀ", "SPANÒ", "CARIDÀ", "FOTÌ", "CANTÙ", "NICOLÒ",
)
ITALIAN_MALE_NAMES = (
    "MARIO", "GIUSEPPE", "GIOVANNI", "ANTONIO", "LUIGI", "FRANCESCO", "ANGELO", "VINCENZO",
    "PIETRO", "SALVATORE", "CARLO", "FRANCO", "DOMENICO", "BRUNO", "PAOLO", "MICHELE",
    "GIORGIO", "ALDO", "SERGIO", "LUCIANO", "ROBERTO", "STEFANO", "ANDREA", "MARCO",
    "ALESSANDRO", "MATTEO", "LORENZO", "LEONARDO", "FEDERICO", "RICCARDO", "GABRIELE",
    "TOMMASO", "EMANUELE", "SIMONE", "DAVIDE", "GIACOMO", "FILIPPO", "LUCA", "GIANFRANCO",
    "GIAN PIERO", "PIER LUIGI", "CRISTIAN", "NICOLA", "NICOLÒ", "NICCOLÒ", "GIOSUÈ", "MOSÈ",
    "NOÈ",
)
ITALIAN_FEMALE_NAMES = (
    "MARIA", "ANNA", "GIUSEPPINA", "ROSA", "ANGELA", "GIOVANNA", "TERESA", "LUCIA", "CARMELA",
    "CATERINA", "FRANCESCA", "ANNA MARIA", "LAURA", "PAOLA", "ELENA", "CHIARA", "SARA",
    "GIULIA", "MARTINA", "SOFIA", "AURORA", "ALICE", "GINEVRA", "BEATRICE", "EMMA", "GIORGIA",
    "FEDERICA", "SILVIA", "VALENTINA", "ROSSANA", "IRENE", "NOEMI", "BENEDETTA", "ASSUNTA",
    "CONCETTA", "IMMACOLATA", "MARIA GRAZIA", "ROSARIA", "GRAZIELLA", "AGNESE", "NICOLETTA",
)

#: Foreign name pools: (surnames, male names, female names). Latin-1 letters only (Romanian
#: ș/ț, Polish ł... are typed without diacritics by operators anyway).
FOREIGN_NAMES = {
    "hisp": (
        ("ZAMBRANO", "VERA", "GARCÍA", "RODRÍGUEZ", "PÉREZ", "LÓPEZ", "SÁNCHEZ", "CASTILLO",
         "QUISPE", "MENDOZA", "MACÍAS", "GUAMÁN", "CEDEÑO", "MUÑOZ", "TORRES", "VILLACÍS"),
        ("JOSÉ", "LUIS", "JUAN CARLOS", "JORGE", "ANDRÉS", "JESÚS", "CARLOS", "ÁNGEL", "DIEGO"),
        ("MARÍA", "ANA", "ROSA", "MARÍA JOSÉ", "JESSICA", "PATRICIA", "MÓNICA", "LUZ", "NANCY"),
    ),
    "alb": (
        ("HOXHA", "SHEHU", "KOÇI", "DERVISHI", "LLESHI", "BALLA", "GJONI", "MUÇA", "KOLA"),
        ("ARBEN", "ERMAL", "ENDRIT", "GENTIAN", "ILIR", "KLEVIS", "FATMIR"),
        ("ELIRA", "BLERINA", "ALBANA", "ENKELEJDA", "MIRELA", "ANISA"),
    ),
    "rom": (
        ("POPESCU", "POPA", "IONESCU", "CONSTANTIN", "DUMITRU", "STAN", "RADU", "MUNTEANU"),
        ("ANDREI", "IOAN", "MIHAI", "IONUT", "CONSTANTIN", "GHEORGHE", "ADRIAN"),
        ("ELENA", "MIHAELA", "ANDREEA", "IOANA", "CRISTINA", "GABRIELA", "DANIELA"),
    ),
    "arab": (
        ("EL AMRANI", "BENALI", "EL IDRISSI", "BOUZID", "BEN SALAH", "TRABELSI", "HASSAN",
         "MANSOUR", "EL KHATIB", "SAIDI"),
        ("MOHAMED", "YOUSSEF", "RACHID", "AHMED", "KHALID", "OMAR", "KARIM", "HICHAM"),
        ("FATIMA", "KHADIJA", "AICHA", "SAMIRA", "NADIA", "LEILA", "ZINEB", "MERIEM"),
    ),
    "wafr": (
        ("DIOP", "NDIAYE", "FALL", "SECK", "SARR", "OKAFOR", "ADEYEMI", "OKONKWO", "DIALLO"),
        ("MAMADOU", "MODOU", "CHEIKH", "IBRAHIMA", "CHINEDU", "EMEKA", "OUSMANE"),
        ("FATOU", "AMINATA", "AWA", "MARIAMA", "BLESSING", "JOY", "NGOZI"),
    ),
    "chn": (
        ("HU", "CHEN", "WANG", "ZHOU", "LIN", "ZHANG", "LI", "WU", "XU"),
        ("WEI", "JIAN", "HAO", "JUN", "MING", "LEI"),
        ("XIAOLI", "MEI", "LING", "YAN", "JING", "XIU"),
    ),
    "slav": (
        ("KOVALENKO", "SHEVCHENKO", "BONDARENKO", "MELNYK", "BOYKO", "TKACHENKO", "IVANOVA",
         "PETRENKO"),
        ("VOLODYMYR", "ANDRIY", "OLEKSANDR", "SERHIY", "MYKOLA", "DMYTRO"),
        ("OKSANA", "OLENA", "NATALIYA", "IRYNA", "SVITLANA", "TETYANA", "HALYNA"),
    ),
    "sasia": (
        ("HOSSAIN", "RAHMAN", "ISLAM", "AHMED", "PERERA", "FERNANDO", "SILVA", "KHAN", "SINGH",
         "KAUR"),
        ("MOHAMMAD", "RAHIM", "KAMAL", "NUWAN", "PRADEEP", "IMRAN", "ARJUN"),
        ("NASRIN", "SHIRIN", "DILANI", "NADEESHA", "AYESHA", "PRIYA"),
    ),
    "phil": (
        ("REYES", "SANTOS", "CRUZ", "BAUTISTA", "DELA CRUZ", "MENDOZA", "GARCIA"),
        ("JOHN PAUL", "MARK", "JOSE", "RONALDO", "ARNEL"),
        ("MARIA CRISTINA", "JOCELYN", "MARILOU", "ROWENA", "MARY ANN"),
    ),
    "west": (
        ("MÜLLER", "SCHMIDT", "DUBOIS", "MARTIN", "SMITH", "NOVAK", "KOWALSKI", "JANSSEN",
         "FERREIRA", "NAGY", "O'BRIEN", "PAPADOPOULOS"),
        ("THOMAS", "PIERRE", "JOHN", "PETER", "JOÃO", "LUKAS", "DAVID", "TOMASZ"),
        ("ANNE", "SOPHIE", "MARIE", "HELGA", "SARAH", "ANNA", "AGNIESZKA", "RENÉE"),
    ),
}

#: Countries of birth of Genova's foreign residents, weighted: (CODAT, weight, name pool).
FOREIGN_BIRTH_COUNTRIES = (
    ("Z605", 25, "hisp"),   # Ecuador, by far the largest community in Genova
    ("Z100", 12, "alb"),    # Albania
    ("Z129", 10, "rom"),    # Romania
    ("Z330", 9, "arab"),    # Marocco
    ("Z611", 6, "hisp"),    # Perù
    ("Z138", 5, "slav"),    # Ucraina
    ("Z210", 4, "chn"),     # Cina
    ("Z343", 4, "wafr"),    # Senegal
    ("Z249", 3, "sasia"),   # Bangladesh
    ("Z209", 3, "sasia"),   # Sri Lanka
    ("Z352", 2, "arab"),    # Tunisia
    ("Z335", 2, "wafr"),    # Nigeria
    ("Z505", 2, "hisp"),    # Repubblica Dominicana
    ("Z604", 2, "hisp"),    # Colombia
    ("Z216", 2, "phil"),    # Filippine
    ("Z336", 2, "arab"),    # Egitto
    ("Z236", 1, "sasia"),   # Pakistan
    ("Z222", 1, "sasia"),   # India
)
P_FOREIGN_OTHER_COUNTRY = 0.10  # of foreign births: any other state, "west" names
#: Name pool for the other states, by the continent digit of their CODAT (Z1xx Europe, Z2xx
#: Asia, Z3xx Africa, Z4xx North America, Z5xx Central America, Z6xx South America, Z7xx
#: Oceania, Z9xx recent African states).
CONTINENT_NAME_POOL = {"1": "west", "2": "sasia", "3": "wafr", "4": "west", "5": "hisp",
                       "6": "hisp", "7": "west", "9": "wafr"}
#: Emigration countries: Italians born abroad (children of emigrants), Italian names and
#: citizenship. Argentina, Svizzera, Germania, Francia, Belgio, Venezuela, Brasile, USA.
EMIGRATION_COUNTRIES = ("Z600", "Z133", "Z112", "Z110", "Z103", "Z614", "Z602", "Z404")
P_FOREIGN_BORN_ITALIAN = 0.20

#: Birthplaces other than Genova that are over-represented (Liguria, big cities, the South).
FREQUENT_BIRTHPLACES = (
    "E463",  # La Spezia
    "I480",  # Savona
    "C621",  # Chiavari
    "H183",  # Rapallo
    "I693",  # Sestri Levante
    "E290",  # Imperia
    "I138",  # Sanremo
    "F205",  # Milano
    "L219",  # Torino
    "H501",  # Roma
    "F839",  # Napoli
    "G273",  # Palermo
    "C351",  # Catania
    "F158",  # Messina
    "H224",  # Reggio di Calabria
    "D086",  # Cosenza
    "A662",  # Bari
    "B354",  # Cagliari
    "I452",  # Sassari
    "A089",  # Agrigento
    "B429",  # Caltanissetta
    "M208",  # Lamezia Terme (since 1968: older births fall back to Genova)
    "D122",  # Crotone
)

#: Comuni of the Genova metro area used as residence besides Genova: (code, CAP).
METRO_RESIDENCES = (
    ("A388", "16011"),  # Arenzano
    ("H212", "16036"),  # Recco
    ("B490", "16032"),  # Camogli
    ("A922", "16031"),  # Bogliasco
    ("I852", "16030"),  # Sori
    ("F098", "16010"),  # Mele
    ("I640", "16010"),  # Serra Riccò
    ("I346", "16010"),  # Sant'Olcese
    ("B551", "16014"),  # Campomorone
    ("C481", "16014"),  # Ceranesi
    ("F202", "16018"),  # Mignanego
)

GENOVA_STREETS = (
    "VIA XX SETTEMBRE", "P.ZZA DE FERRARI", "VIA BALBI", "VIA GARIBALDI", "CORSO BUENOS AIRES",
    "VIA ANTONIO CANTORE", "CORSO EUROPA", "VIA PRÈ", "VIA SAN LUCA", "VIA DEL CAMPO",
    "VIA ASSAROTTI", "CORSO TORINO", "VIA GIACOMETTI", "VIA SAMPIERDARENA", "VIA ROLANDO",
    "VIA CORNIGLIANO", "VIA MERANO", "VIA PIACENZA", "VIA STEFANO TÜRR", "CORSO SARDEGNA",
    "VIA TOLEMAIDE", "CORSO DE STEFANIS", "VIA BOBBIO", "VIA GRAMSCI", "VIA DI FRANCIA",
    "VICO DRITTO DI PONTICELLO", "SALITA SAN NICOLÒ", "P.ZZA BANCHI", "VIA BURLANDO",
    "VIA MOLASSANA", "VIA PASTORINO", "LUNGOMARE DI PEGLI", "VIA MULTEDO DI PEGLI",
    "VIA SESTRI", "VIA OBERDAN", "VIA GIANELLI", "CORSO ITALIA", "VIA TERPI", "VIA ADAMOLI",
    "P.ZZA MANIN", "VIA CANEVARI", "VIA FEREGGIANO", "VIA BORZOLI", "VIA CAMOZZINI",
    "VIA CHIARAVAGNA", "PIAZZA DELLA NUNZIATA", "VIA SAN VINCENZO", "VIA LUCCOLI",
    "VIA RAVASCO",
)
GENERIC_STREETS = ("VIA ROMA", "VIA AURELIA", "VIA GARIBALDI", "VIA MAZZINI", "P.ZZA MATTEOTTI",
                   "VIA XXV APRILE", "VIA DELLA CHIESA", "VIA PROVINCIALE")
GENOVA_CAPS = tuple(str(cap) for cap in range(16121, 16168))
ROMA_LEADING_ZERO_CAPS = tuple(f"{cap:05d}" for cap in range(118, 200))

MOBILE_PREFIXES = ("320", "328", "329", "333", "334", "335", "338", "339", "340", "347",
                   "348", "349", "351", "366", "377", "380", "389", "392", "393")

#: Note templates (operators' free text). ``{eur}`` becomes an Italian amount. They exercise
#: the Windows-1252 range (à è é ì ò ù, € 0x80, ’ 0x92, “ ” 0x93/0x94, – 0x96, — 0x97, … 0x85)
#: and CSV quoting (``;``, embedded ``"`` and line breaks, both LF and CRLF as typed in a
#: textarea).
NOTE_TEMPLATES = (
    "Richiesta contributo affitto; in attesa di documentazione",
    "Contributo economico straordinario di {eur}€ erogato a marzo",
    "L’utente riferisce difficoltà nel pagamento delle utenze",
    "Segnalazione del medico curante: necessità di assistenza domiciliare",
    "Nucleo monogenitoriale con 2 figli minori; la madre è disoccupata",
    "Colloquio con l’assistente sociale il 12/03 — da ricontattare",
    'Dichiara di vivere "in casa di amici" da 3 mesi',
    "Prima presa in carico\nsecondo colloquio fissato",
    "Inviata richiesta al CAF per ISEE aggiornato.\r\nDa verificare residenza",
    "Anziano solo, parzialmente non autosufficiente. Verificare idoneità per RSA",
    "Pagato buono spesa da {eur} €",
    "Ha già usufruito del bonus sociale nell’anno precedente",
    "Richiede accompagnamento per visite in ospedale (San Martino, Galliera)",
    "Affido condiviso; il padre non versa l’assegno di mantenimento",
    "Segnalato dal Municipio I Centro Est – verificare cittadinanza",
    "Non si è presentato all’appuntamento di lunedì… da risentire",
    "Città di provenienza: Guayaquil. Parla solo spagnolo",
    "Debito TARI di {eur}€, rateizzazione in corso",
    "Più volte sollecitato; nessuna risposta.",
    "Assegno di inclusione richiesto il 05/02/2024 – esito “in istruttoria”",
    "Note operatore: ok",
    "Cambio indirizzo comunicato telefonicamente",
    "Trasferita dal distretto 9 al distretto 10",
    'Ha detto: "non ho più la casa"; ospite c/o dormitorio',
    "Presa in carico congiunta con SerD\ncontatti settimanali;\nverificare percorso",
    "Non è più reperibile, perché trasferito all’estero",
    "Così concordato con l’educatore; verifica tra 3 mesi",
    "Utente già noto ai servizi. Pratica n° 2019/{num}",
    "Richiesta esenzione ticket – ISEE inferiore a {eur} €",
    "Invalidità civile 100% con accompagnamento",
)
NOTE_POOL_SIZE = 512

#: Replacements for encodings that lack the Windows-1252 extras (ISO-8859-1).
LATIN1_REPLACEMENTS = (
    (re.compile(r" ?€"), " EUR"),
    (re.compile("[’‘]"), "'"),
    (re.compile("[“”]"), '"'),
    (re.compile("[–—]"), "-"),
    (re.compile("…"), "..."),
)

INVALID_DATE_PATTERNS = ("31/02/{y}", "30/02/{y}", "{y}-13-01", "00/00/0000", "32/01/{y}",
                         "15/13/{y}", "31/04/{y}", "00/06/{y}", "31/11/{y}")
INVALID_DECIMALS = ("12,34,5", "abc", "1.234,56,7", "1O.500,00", "12,,50", "3.4OO,00")

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def csv_escape(value: str) -> str:
    """Quote a field only when needed (``;``, ``"``, CR or LF), doubling inner quotes.

    Only applied where such characters can occur (notes, and the names/streets checked once at
    start-up); the other fields come from closed alphabets (digits, A-Z, ``/``, ``.``, ``,``).
    """
    if ";" in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def weighted_pool(items_weights) -> tuple:
    """Flatten (item, integer weight) pairs into a tuple indexable by one uniform draw."""
    pool = []
    for item, weight in items_weights:
        pool.extend([item] * weight)
    return tuple(pool)


#: Zero-padded numbers as strings: a table lookup is ~15x cheaper than a ``:02d`` format spec.
TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))
THREE_DIGITS = tuple(f"{i:03d}" for i in range(1000))


def format_amount(cents: int) -> str:
    """Italian amount: thousands dot, decimal comma (``12.345,67``, ``850,00``, ``0,50``).

    The common case (< 1 million euro) avoids the generic ``{:,}`` + replace path.
    """
    euros, rest = divmod(cents, 100)
    if euros < 1000:
        return f"{euros},{TWO_DIGITS[rest]}"
    if euros < 1_000_000:
        return f"{euros // 1000}.{THREE_DIGITS[euros % 1000]},{TWO_DIGITS[rest]}"
    return f"{euros:,}".replace(",", ".") + f",{TWO_DIGITS[rest]}"


def name_variants(name: str) -> tuple[str, ...]:
    """Spellings of a name as typed by operators, indexed by ``case + space``.

    ``case`` is 0 (UPPER), 3 (Title) or 6 (lower); ``space`` is 0 (none), 1 (leading) or
    2 (trailing stray space), so the tuple has 9 entries.
    """
    upper = name.upper()
    variants = []
    for spelled in (upper, upper.title(), upper.lower()):
        variants.extend((spelled, " " + spelled, spelled + " "))
    return tuple(variants)


#: Case of both names of a row (same operator habit): 72 % UPPER, 25 % Title, 3 % lower.
CASE_POOL = weighted_pool(((0, 72), (3, 25), (6, 3)))
#: Stray spaces (surname, name): 94 % none, otherwise leading/trailing on one or both.
SPACE_POOL = weighted_pool((((0, 0), 94), ((1, 0), 1), ((2, 0), 2), ((0, 1), 1), ((0, 2), 1),
                            ((2, 2), 1)))
#: ``{0}`` prefix (mobile 3xx or Genova's 010), ``{1}`` 7-digit number, as operators type them.
PHONE_FORMATS = weighted_pool((("{0}{1}", 45), ("{0} {1}", 25), ("+39 {0}{1}", 10),
                               ("+39 {0} {1}", 5), ("{0}/{1}", 10), ("{0}-{1}", 5)))
#: Omocodia level: mostly one substitution, rarely more.
OMOCODIA_LEVEL_POOL = weighted_pool(((1, 70), (2, 18), (3, 7), (4, 2), (5, 1), (6, 1), (7, 1)))


class NameEntry:
    """A name with its spellings, CF fragment and that fragment's check-sum contribution."""

    __slots__ = ("variants", "code", "check_sum")

    def __init__(self, name: str, is_surname: bool):
        self.variants = tuple(csv_escape(v) for v in name_variants(name))
        if is_surname:
            self.code = surname_code(name)
            self.check_sum = cf_partial_sum(self.code, 1)
        else:
            self.code = name_code(name)
            self.check_sum = cf_partial_sum(self.code, 4)


class NamePool:
    """Surnames and male/female first names of one origin, ready for the row hot path."""

    __slots__ = ("surnames", "male", "female")

    def __init__(self, surnames, male, female):
        self.surnames = tuple(NameEntry(s, True) for s in surnames)
        self.male = tuple(NameEntry(n, False) for n in male)
        self.female = tuple(NameEntry(n, False) for n in female)


class DayTable:
    """Per-day precomputations for 1925-01-01 .. 2024-12-31 (index = days since 1925-01-01).

    ``text[i]`` is ``dd/mm/yyyy``; ``cf_male[i]``/``cf_female[i]`` the CF date fragment
    (YYMDD) and ``sum_male[i]``/``sum_female[i]`` its check-sum contribution (positions 7-11).
    Doing this once avoids any datetime work per row.
    """

    def __init__(self):
        # Check-sum contributions of each part: YY at positions 7-8, month letter at 9,
        # day at 10-11 (+40 for women); summing parts is much cheaper than per-day loops.
        year_sum = {y: cf_partial_sum(f"{y % 100:02d}", 7) for y in range(1925, 2025)}
        month_sum = [cf_partial_sum(m, 9) for m in MONTH_LETTERS]
        day_sum = {d: cf_partial_sum(f"{d:02d}", 10) for d in range(1, 72)}
        text, cf_m, cf_f, sum_m, sum_f, years = [], [], [], [], [], []
        for y in range(BIRTH_FIRST.year, BIRTH_LAST.year + 1):
            for m in range(1, 13):
                month_days = range(1, calendar.monthrange(y, m)[1] + 1)
                yym = f"{y % 100:02d}{MONTH_LETTERS[m - 1]}"
                mm_yyyy = f"/{m:02d}/{y}"
                common = year_sum[y] + month_sum[m - 1]
                text.extend([TWO_DIGITS[d] + mm_yyyy for d in month_days])
                cf_m.extend([yym + TWO_DIGITS[d] for d in month_days])
                cf_f.extend([f"{yym}{d + 40}" for d in month_days])
                sum_m.extend([common + day_sum[d] for d in month_days])
                sum_f.extend([common + day_sum[d + 40] for d in month_days])
                years.extend([y] * len(month_days))
        self.count = len(text)
        self.text = tuple(text)
        self.cf_male, self.cf_female = tuple(cf_m), tuple(cf_f)
        self.sum_male, self.sum_female = tuple(sum_m), tuple(sum_f)
        self.year = tuple(years)
        self.isee_first = (ISEE_FIRST - BIRTH_FIRST).days

    def date(self, index: int) -> dt.date:
        """The calendar date of a day index (slow path only)."""
        return BIRTH_FIRST + dt.timedelta(days=index)


# ---------------------------------------------------------------------------------------------
# Row factory
# ---------------------------------------------------------------------------------------------

class RowFactory:
    """Builds rows (as lists of already CSV-escaped fields) from precomputed tables.

    One instance per output file; all randomness comes from ``self.rnd`` so that the same seed
    yields the same rows.
    """

    def __init__(self, seed: int, encoding: str, ref_dir: Path = DEFAULT_REF_DIR):
        self.rnd = random.Random(seed).random
        self.days = DayTable()
        self._load_places(ref_dir)
        self._build_name_pools()
        self.notes = build_note_pool(seed, encoding)
        self.oversized_note = build_oversized_note()
        self.civici = build_civici()
        # 10 % of Genova addresses typed in Title case ("Via Balbi").
        self.streets = GENOVA_STREETS * 9 + tuple(s.title() for s in GENOVA_STREETS)
        check_vocabulary(self, encoding)
        # Only the notes can hold Windows-1252-only characters (see wire_encoding).
        self.notes = tuple(to_wire(note, encoding) for note in self.notes)
        self.oversized_note = to_wire(self.oversized_note, encoding)

    # -- set-up -------------------------------------------------------------------------------

    def _load_places(self, ref_dir: Path) -> None:
        """Load comuni/states and derive the lists the hot path draws from."""
        self.comuni = load_comuni(find_reference_file(ref_dir, "ANPR_archivio_comuni.csv"))
        self.birth_states, self.citizenships = load_stati_esteri(
            find_reference_file(ref_dir, "ANPR_stati_esteri.csv"))
        needed = (GENOVA, ROMA, *FREQUENT_BIRTHPLACES, *(code for code, _ in METRO_RESIDENCES))
        missing = [c for c in needed if c not in self.comuni]
        missing += [c for c, _, _ in FOREIGN_BIRTH_COUNTRIES if c not in self.birth_states]
        missing += [c for c in EMIGRATION_COUNTRIES if c not in self.birth_states]
        if missing:
            raise SystemExit(f"codes missing from the ANPR files: {missing}")
        self.place_sum = {code: cf_partial_sum(code, 12) for code in self.comuni}
        self.place_sum.update({code: cf_partial_sum(code, 12) for code in self.birth_states})
        self.comuni_by_year = self._valid_whole_year(self.comuni)
        self.frequent_by_year = self._valid_whole_year(
            {c: self.comuni[c] for c in FREQUENT_BIRTHPLACES})
        last = self.days.count - 1
        # Codes not valid over the whole 1925-2024 span: candidates for the birthplace defect.
        self.partial_comuni = tuple(
            c for c, iv in self.comuni.items()
            if not any(s <= 0 and e >= last for s, e in iv)
            and any(s <= last and e >= 0 for s, e in iv))
        self.never_valid_comuni = tuple(
            c for c, iv in self.comuni.items() if not any(s <= last and e >= 0 for s, e in iv))
        self.foreign_pool = weighted_pool((c, w) for c, w, _ in FOREIGN_BIRTH_COUNTRIES)
        self.foreign_name_pool = {c: pool for c, _, pool in FOREIGN_BIRTH_COUNTRIES}
        self.other_states = tuple(c for c in self.birth_states if c not in self.foreign_name_pool)

    @staticmethod
    def _valid_whole_year(comuni: dict) -> tuple[tuple[str, ...], ...]:
        """For each birth year 1925-2024, the codes valid on every day of that year.

        Drawing from the birth year's tuple gives a comune valid at the birth date with one
        draw and no test (codes changing in the middle of a year are just skipped that year).
        Codes valid over the whole span are shared by every year; about 7 MB of references
        in total, independent of the number of rows.
        """
        first_year, last_year = BIRTH_FIRST.year, BIRTH_LAST.year
        base = BIRTH_FIRST.toordinal()
        always: list[str] = []
        partial: list[tuple[str, int, int]] = []
        for code, intervals in comuni.items():
            for start, end in intervals:
                start_date = dt.date.fromordinal(base + start)
                end_date = dt.date.fromordinal(base + end)
                # Whole calendar years inside [start, end].
                lo = start_date.year + (0 if (start_date.month, start_date.day) == (1, 1) else 1)
                hi = end_date.year - (0 if (end_date.month, end_date.day) == (12, 31) else 1)
                if lo <= first_year and hi >= last_year:
                    always.append(code)
                elif max(lo, first_year) <= min(hi, last_year):
                    partial.append((code, lo, hi))
        shared = tuple(always)
        return tuple(shared + tuple([code for code, lo, hi in partial if lo <= year <= hi])
                     for year in range(first_year, last_year + 1))

    def _build_name_pools(self) -> None:
        """Precompute spellings and CF fragments of every name."""
        self.italian_names = NamePool(ITALIAN_SURNAMES, ITALIAN_MALE_NAMES, ITALIAN_FEMALE_NAMES)
        self.foreign_names = {key: NamePool(*lists) for key, lists in FOREIGN_NAMES.items()}

    # -- drawing helpers ----------------------------------------------------------------------
    # ``seq[int(rnd() * len(seq))]`` is used inline instead of ``random.choice``: one C call
    # instead of a Python-level ``_randbelow`` loop, which matters at millions of rows.

    def valid_comune(self, day: int, r: float) -> str:
        """A comune valid on ``day``: Genova, a frequent birthplace or any comune.

        ``r`` is the birthplace draw of ``birth_origin`` (uniform below P_BORN_ANY_COMUNE),
        reused so that the P_BORN_* thresholds are shares of all rows.
        """
        rnd = self.rnd
        if r < P_BORN_GENOVA:
            return GENOVA  # valid since 1873
        year = self.days.year[day] - BIRTH_FIRST.year
        if r < P_BORN_FREQUENT:
            candidates = self.frequent_by_year[year]
            if not candidates:
                return GENOVA
        else:
            candidates = self.comuni_by_year[year]
        return candidates[int(rnd() * len(candidates))]

    def invalid_comune(self, day: int) -> str:
        """A comune NOT valid on ``day``: not yet instituted or already ceased.

        Prefers codes valid at some other time in 1925-2024 (the interesting case for a
        validator); falls back to a comune ceased before 1925.
        """
        rnd, partial = self.rnd, self.partial_comuni
        for _ in range(50):
            code = partial[int(rnd() * len(partial))]
            if not is_valid_on(self.comuni[code], day):
                return code
        return self.never_valid_comuni[int(rnd() * len(self.never_valid_comuni))]

    def birth_origin(self, day: int):
        """Birthplace, name pool and citizenship of a person born on ``day``.

        Returns ``(place_code, NamePool, cittadinanza)``. Born in Italy: Italian names and
        citizenship, except 5 % second-generation residents (foreign names, often foreign
        citizenship). Born abroad: Genova's main communities, other states with names of
        their continent, and Italians born to emigrants.
        """
        rnd = self.rnd
        r = rnd()
        if r < P_BORN_ANY_COMUNE:
            place = self.valid_comune(day, r)
            if rnd() >= 0.05:
                return place, self.italian_names, "100"
            country = self.foreign_pool[int(rnd() * len(self.foreign_pool))]
            pool = self.foreign_names[self.foreign_name_pool[country]]
            citizenship = self.birth_states[country][0] if rnd() < 0.6 else "100"
            return place, pool, citizenship
        r = rnd()
        if r < P_FOREIGN_BORN_ITALIAN:
            country = EMIGRATION_COUNTRIES[int(rnd() * len(EMIGRATION_COUNTRIES))]
            pool, citizenship = self.italian_names, "100"
        else:
            if r < P_FOREIGN_BORN_ITALIAN + P_FOREIGN_OTHER_COUNTRY:
                country = self.other_states[int(rnd() * len(self.other_states))]
                pool = self.foreign_names[CONTINENT_NAME_POOL[country[1]]]
            else:
                country = self.foreign_pool[int(rnd() * len(self.foreign_pool))]
                pool = self.foreign_names[self.foreign_name_pool[country]]
            citizenship = self.birth_states[country][0]
            if citizenship not in self.citizenships or rnd() < 0.2:
                citizenship = "100"  # naturalised, or a state not usable as citizenship
        if not is_valid_on((self.birth_states[country][1],), day):
            return GENOVA, self.italian_names, "100"
        return country, pool, citizenship

    def address(self) -> tuple[str, str, str]:
        """``(indirizzo, cap, comune_residenza)``: Genova mostly, ~3 % Roma with ``00xxx`` CAP.

        The house number comes from a precomputed pool (plain, ``/interno``, Genova's red
        ``R`` shop numbering, letter suffix).
        """
        rnd = self.rnd
        civico = self.civici[int(rnd() * len(self.civici))]
        r = rnd()
        if r < P_CAP_LEADING_ZERO:
            street = GENERIC_STREETS[int(rnd() * len(GENERIC_STREETS))]
            cap = ROMA_LEADING_ZERO_CAPS[int(rnd() * len(ROMA_LEADING_ZERO_CAPS))]
            return f"{street} {civico}", cap, ROMA
        if r < P_CAP_LEADING_ZERO + P_RESIDENT_OTHER_METRO:
            street = GENERIC_STREETS[int(rnd() * len(GENERIC_STREETS))]
            code, cap = METRO_RESIDENCES[int(rnd() * len(METRO_RESIDENCES))]
            return f"{street} {civico}", cap, code
        street = self.streets[int(rnd() * len(self.streets))]
        return f"{street} {civico}", GENOVA_CAPS[int(rnd() * len(GENOVA_CAPS))], GENOVA

    def isee(self, birth_day: int) -> tuple[str, str]:
        """``(isee, data_isee)``: an Italian amount and its date, or both empty (~30 %)."""
        rnd = self.rnd
        if rnd() < P_ISEE_EMPTY:
            return "", ""
        r = rnd()
        if r < 0.04:
            cents = int(rnd() * 1000)                      # 0,00 - 9,99
        elif r < 0.15:
            cents = int(rnd() * 100_000)                   # < 1.000
        elif r < 0.80:
            cents = 100_000 + int(rnd() * 1_900_000)       # 1.000 - 20.000
        else:
            cents = 2_000_000 + int(rnd() * 4_000_000)     # 20.000 - 60.000
        days = self.days
        first = birth_day if birth_day > days.isee_first else days.isee_first
        return format_amount(cents), days.text[first + int(rnd() * (days.count - first))]

    def iban(self) -> str:
        """A valid Italian IBAN, or ''.

        Layout: IT, 2 check digits, CIN letter, ABI (5), CAB (5), account (12) = 27 chars. The
        CIN is the national check letter over ABI + CAB + account, computed with the same
        odd/even tables as the codice fiscale check character; banks reject an IBAN whose
        CIN is wrong even when the mod-97 digits are right, and so does snodo.
        """
        rnd = self.rnd
        if rnd() < P_IBAN_EMPTY:
            return ""
        abi = BANK_ABI[int(rnd() * len(BANK_ABI))]
        bban_tail = f"{abi}{str(100_000 + int(rnd() * 100_000))[1:]}{str(1_000_000_000_000 + int(rnd() * 1_000_000_000_000))[1:]}"
        cin = CHECK_LETTERS[cf_partial_sum(bban_tail, 1) % 26]
        bban = cin + bban_tail
        return f"IT{iban_check_digits('IT', bban)}{bban}"

    def phone(self) -> str:
        """Italian phone number in one of the formats operators type, or '' (~12 %)."""
        rnd = self.rnd
        r = rnd()
        if r < P_PHONE_EMPTY:
            return ""
        number = str(10_000_000 + int(rnd() * 10_000_000))[1:]  # 7 digits, zero-padded
        if r < 0.66:
            prefix = MOBILE_PREFIXES[int(rnd() * len(MOBILE_PREFIXES))]
        else:
            prefix = "010"  # Genova landline
        return PHONE_FORMATS[int(rnd() * len(PHONE_FORMATS))].format(prefix, number)

    # -- rows ---------------------------------------------------------------------------------

    def person(self, row_id: int, *, force_cf: bool = False,
               place_valid: bool = True) -> list[str]:
        """A valid row as a list of CSV fields.

        ``force_cf`` disables the empty-CF and omocodia cases (bad rows carry a plain CF);
        ``place_valid=False`` draws a comune NOT valid at the birth date (and builds the CF
        with it) for the ``birthplace_not_valid_at_birth`` defect.
        """
        rnd, days = self.rnd, self.days
        day = int(rnd() * days.count)
        female = rnd() < P_FEMALE
        if place_valid:
            place, pool, citizenship = self.birth_origin(day)
        else:
            place, pool, citizenship = self.invalid_comune(day), self.italian_names, "100"
        surname = pool.surnames[int(rnd() * len(pool.surnames))]
        firsts = pool.female if female else pool.male
        first = firsts[int(rnd() * len(firsts))]
        case = CASE_POOL[int(rnd() * len(CASE_POOL))]
        space_surname, space_name = SPACE_POOL[int(rnd() * len(SPACE_POOL))]
        if female:
            date_code, date_sum = days.cf_female[day], days.sum_female[day]
        else:
            date_code, date_sum = days.cf_male[day], days.sum_male[day]
        check_sum = surname.check_sum + first.check_sum + date_sum + self.place_sum[place]
        cf = f"{surname.code}{first.code}{date_code}{place}{CHECK_LETTERS[check_sum % 26]}"
        if not force_cf:
            r = rnd()
            if r < P_EMPTY_CF:
                cf = ""
            elif r < P_EMPTY_CF + P_OMOCODIA:
                cf = apply_omocodia(cf, OMOCODIA_LEVEL_POOL[int(rnd() * len(OMOCODIA_LEVEL_POOL))])
        indirizzo, cap, residenza = self.address()
        isee, data_isee = self.isee(day)
        note = "" if rnd() < P_NOTE_EMPTY else self.notes[int(rnd() * len(self.notes))]
        fields = [
            str(row_id), surname.variants[case + space_surname],
            first.variants[case + space_name], cf, "F" if female else "M", days.text[day],
            place, citizenship, indirizzo, cap, residenza, isee, data_isee, self.iban(),
            self.phone(), note,
        ]
        return fields

    def bad_row(self, row_id: int, kind: str) -> list[str]:
        """A row with exactly one defect of ``kind`` (everything else valid)."""
        if kind == "birthplace_not_valid_at_birth":
            return self.person(row_id, force_cf=True, place_valid=False)
        fields = self.person(row_id, force_cf=True)
        rnd = self.rnd
        if kind == "invalid_date":
            pattern = INVALID_DATE_PATTERNS[int(rnd() * len(INVALID_DATE_PATTERNS))]
            fields[5] = pattern.format(y=fields[5][-4:])
        elif kind == "invalid_decimal":
            if not fields[11]:  # give it a date (never before birth): only the amount is wrong
                fields[12] = self.days.text[-1]
            fields[11] = INVALID_DECIMALS[int(rnd() * len(INVALID_DECIMALS))]
        elif kind == "bad_cf_check":
            cf = fields[3]
            wrong = (CHECK_LETTERS.index(cf[15]) + 1 + int(rnd() * 25)) % 26
            fields[3] = cf[:15] + CHECK_LETTERS[wrong]
        elif kind == "missing_required":
            fields[1] = ""
        elif kind == "malformed_row":
            del fields[1 + int(rnd() * (len(COLUMNS) - 1))]
        elif kind == "oversized_field":
            fields[15] = self.oversized_note
        else:
            raise ValueError(kind)
        return fields


def build_note_pool(seed: int, encoding: str) -> tuple[str, ...]:
    """Render the note templates into a fixed pool of CSV-escaped notes.

    Rendering once (with its own seeded RNG) keeps the per-row cost to one draw. For
    ISO-8859-1 the Windows-1252-only characters (€ ’ “ ” – — …) are replaced, since that
    encoding cannot represent them.
    """
    rng = random.Random(f"notes-{seed}")
    notes = []
    for i in range(NOTE_POOL_SIZE):
        template = NOTE_TEMPLATES[i % len(NOTE_TEMPLATES)]
        text = template.format(eur=format_amount(rng.randrange(1, 300) * 500),
                               num=rng.randrange(100, 9999))
        if encoding == "iso-8859-1":
            for pattern, replacement in LATIN1_REPLACEMENTS:
                text = pattern.sub(replacement, text)
        notes.append(csv_escape(text))
    return tuple(notes)


def build_civici() -> tuple[str, ...]:
    """Pool of house numbers: 55 % plain, 25 % with ``/interno``, 12 % red ``R``, 8 % letter.

    Precomputed (deterministically, no RNG) so that a row needs one draw and no formatting.
    """
    plain = [str(n) for n in range(1, 181)]
    interno = [f"{n}/{k}" for n in range(1, 181) for k in range(1, 25)]
    red = [f"{n}R" for n in range(1, 181)]
    letter = [f"{n}{x}" for n in range(1, 181) for x in "ABC"]
    # Repeat each list so that its share of the pool matches the percentages above.
    unit = len(interno)  # the largest list
    return tuple(plain * (55 * unit // (25 * len(plain))) + interno
                 + red * (12 * unit // (25 * len(red))) + letter * (8 * unit // (25 * len(letter))))


def build_oversized_note() -> str:
    """A 5000-character note (a pasted social report), no separators so only its size is wrong."""
    chunk = ("Relazione sociale: il nucleo è seguito dal servizio da più anni, la situazione "
             "economica è peggiorata dopo la perdita del lavoro, si propone proroga del "
             "contributo e verifica entro sei mesi. ")
    text = (chunk * (OVERSIZED_NOTE_LEN // len(chunk) + 1))[:OVERSIZED_NOTE_LEN]
    assert len(text) == OVERSIZED_NOTE_LEN and csv_escape(text) == text
    return text


def check_vocabulary(factory: RowFactory, encoding: str) -> None:
    """Fail at start-up (not after gigabytes) if a vocabulary entry cannot be written.

    Every entry must encode in ``encoding``. Names and streets must moreover be Latin-1
    (they are used unchanged for every encoding, and the ISO-8859-1 output has to hold them)
    and need no CSV quoting (they are not escaped per row).
    """
    for text in (factory.oversized_note, *factory.notes):
        text.encode(encoding)
    latin1 = [*GENOVA_STREETS, *GENERIC_STREETS]
    for pool in (factory.italian_names, *factory.foreign_names.values()):
        for entry in (*pool.surnames, *pool.male, *pool.female):
            latin1.extend(entry.variants)
    for text in latin1:
        text.encode("iso-8859-1")
        assert csv_escape(text) == text, text


# ---------------------------------------------------------------------------------------------
# Output encoding
# ---------------------------------------------------------------------------------------------

#: Windows-1252 characters of the 0x80-0x9F block (€ ’ “ ” … ) -> the Latin-1 code point with
#: the same byte value (U+0080-U+009F).
CP1252_TO_WIRE = {}
for _byte in range(0x80, 0xA0):
    try:
        CP1252_TO_WIRE[ord(bytes([_byte]).decode("cp1252"))] = _byte
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are unassigned
        pass
WIRE_TO_CP1252 = {byte: char for char, byte in CP1252_TO_WIRE.items()}


def wire_encoding(encoding: str) -> str:
    """Codec to put on the output stream for the requested ``encoding``.

    Python's cp1252 codec goes through the generic per-character charmap encoder, which costs
    about 10 % of the run time, while Latin-1 encoding of a one-byte-per-char string is a
    plain copy. Windows-1252 is Latin-1 except for the 0x80-0x9F block, so for cp1252 the
    (few) vocabulary strings containing € ’ “ ” … are pre-mapped to U+0080-U+009F
    (``to_wire``) and the stream is written as Latin-1: the bytes are exactly the cp1252 ones.
    This is safe because every other character we emit is ASCII or Latin-1 letters, never
    a U+0080-U+009F control (checked by ``check_vocabulary``).
    """
    return "iso-8859-1" if encoding == "cp1252" else encoding


def to_wire(text: str, encoding: str) -> str:
    """Text as written to a ``wire_encoding(encoding)`` stream (see there)."""
    return text.translate(CP1252_TO_WIRE) if encoding == "cp1252" else text


def from_wire(text: str, encoding: str) -> str:
    """Inverse of ``to_wire``: the real text of what ``generate`` wrote."""
    return text.translate(WIRE_TO_CP1252) if encoding == "cp1252" else text


# ---------------------------------------------------------------------------------------------
# Bad-row schedule
# ---------------------------------------------------------------------------------------------

def bad_row_schedule(rows: int, bad_rate: float, seed: int):
    """Yield ``(row_index, kind)`` for the bad rows, in increasing row order.

    ``round(rows * bad_rate)`` bad rows; row ``i`` of the schedule is drawn uniformly inside
    the ``i``-th of as many equal segments of the file (uniform spread, no clustering), and
    kinds are dealt in shuffled rounds of all seven kinds (every kind present, counts within
    one of each other). Generated lazily so memory stays flat.
    """
    rng = random.Random(f"bad-{seed}")
    count = min(rows, round(rows * bad_rate))
    kinds: list[str] = []
    for i in range(count):
        if not kinds:
            kinds = list(BAD_KINDS)
            for j in range(len(kinds) - 1, 0, -1):  # Fisher-Yates with random() only
                k = int(rng.random() * (j + 1))
                kinds[j], kinds[k] = kinds[k], kinds[j]
        start = i * rows // count
        end = (i + 1) * rows // count
        yield start + int(rng.random() * (end - start)), kinds.pop()


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

def generate(out, rows: int, seed: int, bad_rate: float, encoding: str,
             ref_dir: Path = DEFAULT_REF_DIR) -> dict:
    """Write header and ``rows`` rows to the text stream ``out``; return the expectation dict.

    ``out`` must encode with ``wire_encoding(encoding)`` (text written is ``to_wire`` text).
    """
    factory = RowFactory(seed, encoding, ref_dir)
    person, bad_row = factory.person, factory.bad_row
    bad_counts = {kind: 0 for kind in BAD_KINDS}
    bad_ids: dict[str, list[int]] = {kind: [] for kind in BAD_KINDS}
    schedule = bad_row_schedule(rows, bad_rate, seed)
    next_bad, next_kind = next(schedule, (-1, None))

    out.write(";".join(COLUMNS) + "\r\n")
    batch: list[str] = []
    for index in range(rows):
        row_id = FIRST_ID + index
        if index == next_bad:
            fields = bad_row(row_id, next_kind)
            bad_counts[next_kind] += 1
            if len(bad_ids[next_kind]) <= MAX_LISTED_BAD_IDS:
                bad_ids[next_kind].append(row_id)
            next_bad, next_kind = next(schedule, (-1, None))
        else:
            fields = person(row_id)
        batch.append(";".join(fields))
        if len(batch) >= 2000:
            batch.append("")
            out.write("\r\n".join(batch))
            batch.clear()
    if batch:
        batch.append("")
        out.write("\r\n".join(batch))

    total_bad = sum(bad_counts.values())
    return {
        "rows": rows,
        "valid": rows - total_bad,
        "bad": bad_counts,
        "bad_ids": {k: v for k, v in bad_ids.items() if len(v) <= MAX_LISTED_BAD_IDS},
    }


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------

def self_test(ref_dir: Path = DEFAULT_REF_DIR) -> int:
    """Check the CF and IBAN algorithms on known codes, then round-trip a generated sample."""
    failures = []

    def expect(label, got, want):
        if got != want:
            failures.append(f"{label}: got {got!r}, want {want!r}")

    expect("CF Bianchi Mario", build_cf("Bianchi", "Mario", dt.date(1980, 1, 1), False, "D548"),
           "BNCMRA80A01D548T")
    expect("CF Rossi Mario", build_cf("Rossi", "Mario", dt.date(1985, 12, 10), False, "A562"),
           "RSSMRA85T10A562S")
    for cf in ("BNCMRA80A01D548T", "RSSMRA85T10A562S", "NREGCM80H30D612D"):
        expect(f"check char {cf}", cf_check_char(cf[:15]), cf[15])
    expect("name rule 4+ consonants", name_code("Gianfranco"), "GFR")
    expect("name rule with space", name_code("Anna Maria"), "NMR")
    expect("surname X padding", surname_code("Fo"), "FOX")
    expect("apostrophe/accent", surname_code("D'Angelo") + name_code("Nicolò"), "DNGNCL")
    expect("female day +40", cf_date_code(dt.date(1990, 7, 5), True), "90L45")
    omo = apply_omocodia("BNCMRA80A01D548T", 1)
    expect("omocodia level 1", omo[:15], "BNCMRA80A01D54U")
    expect("omocodia check", omo[15], cf_check_char(omo[:15]))
    expect("omocodia level 7", apply_omocodia("BNCMRA80A01D548T", 7)[:15], "BNCMRAULALMDRQU")
    expect("IBAN check digits", iban_check_digits("IT", "X0542811101000000123456"), "60")
    expect("IBAN valid", iban_is_valid("IT60X0542811101000000123456"), True)
    expect("amount", [format_amount(c) for c in (1234567, 85000, 50)],
           ["12.345,67", "850,00", "0,50"])
    failures.extend(round_trip_check(ref_dir))

    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    print("self-test:", "FAILED" if failures else "OK", file=sys.stderr)
    return 1 if failures else 0


def round_trip_check(ref_dir: Path, rows: int = 3000) -> list[str]:
    """Generate a sample in memory, parse it back with ``csv`` and validate every row.

    Catches regressions in the generator itself: a row must show exactly the defect the
    sidecar announces for it (none for valid rows). Checked: field count, dates, CF check
    character and its consistency with surname/name/date/sex/birthplace, birthplace validity
    at the birth date, amounts, IBAN mod 97, required surname, note length, CRLF endings;
    plus determinism and strict encodability in every supported encoding.
    """
    problems: list[str] = []
    buffer = io.StringIO(newline="")
    expected = generate(buffer, rows, seed=7, bad_rate=0.05, encoding="cp1252", ref_dir=ref_dir)
    factory = RowFactory(7, "cp1252", ref_dir)
    kind_of = {i: k for k, ids in expected["bad_ids"].items() for i in ids}
    text = from_wire(buffer.getvalue(), "cp1252")
    if "€" not in text or "’" not in text:
        problems.append("cp1252 sample lacks the euro sign or the curly apostrophe")
    again = io.StringIO(newline="")
    generate(again, rows, seed=7, bad_rate=0.05, encoding="cp1252", ref_dir=ref_dir)
    if from_wire(again.getvalue(), "cp1252") != text:
        problems.append("same seed produced different output")
    for encoding in sorted(set(ENCODINGS.values())):
        sample = io.StringIO(newline="")
        generate(sample, 500, seed=11, bad_rate=0.05, encoding=encoding, ref_dir=ref_dir)
        try:
            data = sample.getvalue().encode(wire_encoding(encoding))
            if data.decode(encoding) != from_wire(sample.getvalue(), encoding):
                problems.append(f"{encoding}: wire encoding differs from the real one")
        except UnicodeError as err:
            problems.append(f"{encoding}: {err}")
    if not text.endswith("\r\n") or not text.startswith(";".join(COLUMNS) + "\r\n"):
        problems.append("bad header or line endings")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";")
    next(reader)
    seen = 0
    for fields in reader:
        seen += 1
        row_id = int(fields[0])
        defects = row_defects(fields, factory)
        want = [kind_of[row_id]] if row_id in kind_of else []
        if defects != want:
            problems.append(f"{row_id}: defects {defects}, expected {want}")
    if seen != rows:
        problems.append(f"parsed {seen} rows, expected {rows}")
    return problems[:20]


def row_defects(fields: list[str], factory: RowFactory) -> list[str]:
    """Defects (BAD_KINDS names) a validator finds in one parsed row; [] for a valid row."""
    if len(fields) != len(COLUMNS):
        return ["malformed_row"]
    defects = []
    surname, name, cf, sex, birth, place = fields[1:7]
    birth_date = None
    try:
        day, month, year = (int(x) for x in birth.split("/"))
        birth_date = dt.date(year, month, day)
    except ValueError:
        defects.append("invalid_date")
    if not re.fullmatch(r"(\d{1,3}(\.\d{3})*,\d{2})?", fields[11]):
        defects.append("invalid_decimal")
    if cf and cf_check_char(cf[:15]) != cf[15]:
        defects.append("bad_cf_check")
    if not surname.strip():
        defects.append("missing_required")
    if len(fields[15]) > 1000:
        defects.append("oversized_field")
    if birth_date is not None:
        day_index = (birth_date - BIRTH_FIRST).days
        if place.startswith("Z"):
            valid_place = is_valid_on((factory.birth_states[place][1],), day_index)
        else:
            valid_place = is_valid_on(factory.comuni.get(place, ()), day_index)
        if not valid_place:
            defects.append("birthplace_not_valid_at_birth")
        if cf and surname:
            plain = "".join(str(OMOCODIA_LETTERS.index(c)) if i in OMOCODIA_POSITIONS and
                            c in OMOCODIA_LETTERS else c for i, c in enumerate(cf))
            if plain[:15] != build_cf(surname, name, birth_date, sex == "F", place)[:15]:
                defects.append("cf_mismatch")  # never injected: a generator bug
    if fields[13] and not iban_is_valid(fields[13]):
        defects.append("bad_iban")  # never injected: a generator bug
    if bool(fields[11]) != bool(fields[12]):
        defects.append("isee_without_date")  # never injected: a generator bug
    return defects


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    """Command line; ``--rows/--seed/--out`` are required unless ``--self-test``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="number of data rows (header excluded)")
    parser.add_argument("--seed", type=int, help="random seed (same seed -> same bytes)")
    parser.add_argument("--out", type=Path, help="output CSV path")
    parser.add_argument("--bad-rate", type=float, default=0.01,
                        help="share of bad rows, spread uniformly (default 0.01)")
    parser.add_argument("--encoding", default="cp1252", choices=sorted(ENCODINGS),
                        help="output encoding (default cp1252 = Windows-1252)")
    parser.add_argument("--expect", type=Path, help="write the JSON expectation sidecar here")
    parser.add_argument("--ref-dir", type=Path, default=DEFAULT_REF_DIR,
                        help="directory of the ANPR comuni/stati esteri CSVs "
                             "(default $SNODO_REF_DIR or %(default)s)")
    parser.add_argument("--self-test", action="store_true",
                        help="verify the CF/IBAN algorithms and a generated sample, then exit")
    args = parser.parse_args(argv)
    if not args.self_test:
        if args.rows is None or args.seed is None or args.out is None:
            parser.error("--rows, --seed and --out are required")
        if args.rows < 0 or not 0.0 <= args.bad_rate <= 1.0:
            parser.error("--rows must be >= 0 and --bad-rate within [0, 1]")
    return args


def main(argv=None) -> int:
    """Entry point: generate the CSV (and sidecar) or run the self-test."""
    args = parse_args(argv)
    if args.self_test:
        return self_test(args.ref_dir)
    encoding = ENCODINGS[args.encoding]
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding=wire_encoding(encoding), errors="strict", newline="",
              buffering=1 << 20) as out:
        expected = generate(out, args.rows, args.seed, args.bad_rate, encoding, args.ref_dir)
    if args.expect:
        args.expect.parent.mkdir(parents=True, exist_ok=True)
        args.expect.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
    elapsed = time.perf_counter() - started
    rate = args.rows / elapsed if elapsed > 0 else float("inf")
    print(f"{args.out}: {args.rows} rows ({expected['rows'] - expected['valid']} bad) "
          f"in {elapsed:.2f}s, {rate:,.0f} rows/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
