#!/usr/bin/env python3
"""Deterministic generator of the three legacy databases of the Comune di Genova social services.

Snodo has to migrate three SQL Server applications:

* ``segretariato``   - Segretariato Sociale (first-contact desk: reports/"segnalazioni");
* ``web_distretti``  - Web Distretti (case management of the 9 districts: prese in carico,
  interventions, ISEE, family units);
* ``scheda_tecnica`` - Scheda Tecnica (parametric assessment forms with the PIA score).

Their schemas, as a SQL Server DBA sees them, are documented in
``tests/fixtures/legacy/*.sql``.  This script fills the same tables with synthetic but
realistic data (Italian names, correct codici fiscali, Genova addresses...), injects known
dirty rows and cross-system duplicates, and writes the ground truth to ``expect.json``.

Usage::

    gen_legacy_db.py --out DIR --persons N --seed S --format sqlite|pgsql|csv
    gen_legacy_db.py --self-test

Formats:

* ``sqlite``: ``DIR/<system>.sqlite`` (plain table names, INTEGER/TEXT columns, ISO dates,
  decimals as text ``123.45``, bit as 0/1);
* ``pgsql``:  ``DIR/<system>.sql``, psql scripts creating schema ``<system>`` and loading it with
  ``COPY ... FROM stdin`` blocks (one block per chunk of 10 000 rows);
* ``csv``:    ``DIR/<system>/<table>.csv``, BCP-style: ``;``, header, cp1252, CRLF,
  ``dd/mm/yyyy`` dates, decimal comma, NULL = empty field, RFC 4180 quoting when needed.

``DIR/expect.json`` is written in every format and is byte-identical across formats.

Design:

* **Determinism**: real person ``i`` draws everything from ``random.Random(f"{seed}:{i}")``;
  the few sequential things (id counters, family units) depend only on the order of ``i``.
  Same arguments -> byte-identical files.  No wall clock (the extraction date is fixed,
  ``REF_DATE`` = 2025-12-31).
* **Streaming**: rows go to per-table buffers flushed every 10 000 rows (``executemany`` +
  commit, or a COPY block, or CSV lines); ground-truth lists are spooled to temporary files.
  Memory is flat whatever ``--persons`` is.
* **Uniqueness of identities**: ``(surname, birth date)`` of real person ``i`` is a bijection
  of ``i`` (Feistel permutation over surnames x days), and every surname in the pool has a
  distinct 3-letter CF code, so two different real persons never share a codice fiscale nor
  the (cognome, nome, data_nascita, comune_nascita) key, except the deliberate
  ``different_cf_same_data`` homonyms.  Hence ``--persons`` is limited to ~5.4 million.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import filecmp
import json
import random
import re
import sqlite3
import sys
import tempfile
import unicodedata
from pathlib import Path

SYSTEMS = ("segretariato", "web_distretti", "scheda_tecnica")
CHUNK = 10_000
REF_DATE = dt.date(2025, 12, 31)          # extraction date: "today" for the legacy data
BIRTH_FIRST = dt.date(1925, 1, 1)
BIRTH_LAST = REF_DATE
MIN_VALID_BIRTH = dt.date(1900, 1, 1)
SYSTEM_START = {                          # go-live of each legacy application
    "segretariato": dt.date(2010, 3, 1),
    "web_distretti": dt.date(2008, 1, 7),
    "scheda_tecnica": dt.date(2012, 9, 1),
}
#: IDENTITY seeds of anagrafica: the systems number persons independently (Web Distretti
#: and Scheda Tecnica were loaded from older archives when they went live).
ANAGRAFICA_FIRST_ID = {"segretariato": 1, "web_distretti": 30001, "scheda_tecnica": 700001}
OMIT_CLUSTERS_FROM = 100_000              # N >= this: clusters list omitted, counts kept
SELF_TEST_PERSONS = 300
SELF_TEST_SEED = 20240611

# ---------------------------------------------------------------------------------------------
# Schema (column name, type).  Types: id/int (integer), str (varchar), text (nvarchar),
# date, datetime, dec (decimal(12,2)), dec5 (decimal(5,2)), bit.
# ---------------------------------------------------------------------------------------------

ANAGRAFICA = (
    ("id_anagrafica", "id"), ("cognome", "str"), ("nome", "str"), ("codice_fiscale", "str"),
    ("sesso", "str"), ("data_nascita", "date"), ("comune_nascita", "str"),
    ("cittadinanza", "str"), ("comune_residenza", "str"), ("indirizzo", "str"),
    ("residente", "bit"), ("data_decesso", "date"), ("data_modifica", "datetime"),
)

SCHEMA = {
    "segretariato": {
        "anagrafica": (ANAGRAFICA, ("id_anagrafica",)),
        "tab_richiesta": ((("cod_richiesta", "str"), ("descrizione", "str")), ("cod_richiesta",)),
        "tab_problema": ((("cod_problema", "str"), ("descrizione", "str")), ("cod_problema",)),
        "segnalazione": ((
            ("id_segnalazione", "id"), ("id_anagrafica", "int"), ("data_segnalazione", "date"),
            ("tipo_segnalante", "str"), ("segnalante", "text"), ("id_anagrafica_segnalante", "int"),
            ("distretto", "int"), ("esito", "str"), ("note", "text")), ("id_segnalazione",)),
        "segnalazione_richiesta": ((("id_segnalazione", "int"), ("cod_richiesta", "str")),
                                   ("id_segnalazione", "cod_richiesta")),
        "segnalazione_problema": ((("id_segnalazione", "int"), ("cod_problema", "str")),
                                  ("id_segnalazione", "cod_problema")),
    },
    "web_distretti": {
        "anagrafica": (ANAGRAFICA, ("id_anagrafica",)),
        "nucleo": ((("id_nucleo", "id"), ("tipo", "str"), ("data_costituzione", "date")),
                   ("id_nucleo",)),
        "nucleo_componente": ((("id_nucleo", "int"), ("id_anagrafica", "int"), ("relazione", "str")),
                              ("id_nucleo", "id_anagrafica")),
        "operatore": ((("id_operatore", "id"), ("cognome", "str"), ("nome", "str"),
                       ("qualifica", "str"), ("attivo", "bit")), ("id_operatore",)),
        "presa_in_carico": ((
            ("id_pic", "id"), ("id_anagrafica", "int"), ("servizio", "str"), ("tipo_pic", "str"),
            ("data_apertura", "date"), ("data_chiusura", "date"), ("cod_motivo_chiusura", "str")),
            ("id_pic",)),
        "presa_in_carico_storico": ((
            ("id_storico", "id"), ("id_pic", "int"), ("servizio_da", "str"), ("servizio_a", "str"),
            ("data_trasferimento", "date")), ("id_storico",)),
        "pic_operatore": ((
            ("id_pic", "int"), ("id_operatore", "int"), ("ruolo", "str"), ("data_inizio", "date"),
            ("data_fine", "date")), ("id_pic", "id_operatore", "data_inizio")),
        "pic_tipizzazione": ((("id_pic", "int"), ("cod_tipizzazione", "str")),
                             ("id_pic", "cod_tipizzazione")),
        "tab_intervento": ((
            ("cod_intervento", "str"), ("descrizione", "str"), ("macro_area", "str"),
            ("tipo_periodo", "str"), ("unita_economica", "str"), ("attivo", "bit"),
            ("data_inizio", "date"), ("data_fine", "date")), ("cod_intervento",)),
        "fornitore": ((("id_fornitore", "id"), ("ragione_sociale", "str"), ("partita_iva", "str"),
                       ("iban", "str")), ("id_fornitore",)),
        "intervento": ((
            ("id_intervento", "id"), ("id_pic", "int"), ("id_anagrafica", "int"),
            ("cod_intervento", "str"), ("data_inizio", "date"), ("data_fine", "date"),
            ("quantita", "dec"), ("importo", "dec"), ("id_fornitore", "int")), ("id_intervento",)),
        "isee": ((("id_isee", "id"), ("id_anagrafica", "int"), ("anno", "int"), ("valore", "dec"),
                  ("data_scadenza", "date")), ("id_isee",)),
    },
    "scheda_tecnica": {
        "anagrafica": (ANAGRAFICA, ("id_anagrafica",)),
        "st_sezione": ((("id_sezione", "id"), ("codice", "str"), ("descrizione", "str"),
                        ("ordine", "int")), ("id_sezione",)),
        "st_modulo": ((("id_modulo", "id"), ("id_sezione", "int"), ("codice", "str"),
                       ("descrizione", "str"), ("ordine", "int")), ("id_modulo",)),
        "st_voce": ((
            ("id_voce", "id"), ("id_modulo", "int"), ("codice", "str"), ("descrizione", "str"),
            ("tipo_valore", "str"), ("dimensione_pia", "str"), ("peso_pia", "dec5"),
            ("valido_dal", "date"), ("valido_al", "date")), ("id_voce",)),
        "st_scheda": ((
            ("id_scheda", "id"), ("id_anagrafica", "int"), ("data_compilazione", "date"),
            ("operatore", "text"), ("pia_totale", "dec5")), ("id_scheda",)),
        "st_valore": ((
            ("id_valore", "id"), ("id_scheda", "int"), ("id_voce", "int"), ("valore", "text"),
            ("data_inserimento", "datetime"), ("data_fine_validita", "datetime")), ("id_valore",)),
    },
}

# ---------------------------------------------------------------------------------------------
# Codice fiscale, partita IVA, IBAN
# ---------------------------------------------------------------------------------------------

# The codice fiscale and IBAN algorithms are those of the CSV fixture generator beside this
# file: one implementation, checked by its self-test against the official examples.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_legacy_csv import (  # noqa: E402
    CHECK_LETTERS,
    OMOCODIA_LETTERS,
    OMOCODIA_POSITIONS,
    build_cf,
    cf_check_char as check_char,
    cf_letters as letters_only,
    iban_check_digits,
    iban_is_valid,
    surname_code,
)

CF_PATTERN = re.compile(r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z]"
                        r"[0-9LMNPQRSTUV]{3}[A-Z]")


def omocodia(cf: str, level: int) -> str:
    chars = list(cf[:15])
    for pos in OMOCODIA_POSITIONS[:level]:
        chars[pos] = OMOCODIA_LETTERS[int(chars[pos])] if chars[pos].isdigit() else chars[pos]
    first = "".join(chars)
    return first + check_char(first)


def cf_is_valid(cf: str | None) -> bool:
    """Formal validity: 16 chars, positional pattern (omocodia letters allowed), check char."""
    return bool(cf) and CF_PATTERN.fullmatch(cf) is not None and check_char(cf[:15]) == cf[15]


def piva_check(first10: str) -> str:
    x = sum(int(first10[k]) for k in range(0, 10, 2))
    y = 0
    for k in range(1, 10, 2):
        d = int(first10[k]) * 2
        y += d - 9 if d > 9 else d
    return str((10 - (x + y) % 10) % 10)


def iban_it(abi: str, cab: str, conto: str) -> str:
    bban_nocin = abi + cab + conto
    bban = check_char(bban_nocin) + bban_nocin
    return f"IT{iban_check_digits('IT', bban)}{bban}"


# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------

ITALIAN_SURNAMES = (
    "ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO", "RICCI", "MARINO",
    "GRECO", "BRUNO", "GALLO", "CONTI", "DE LUCA", "MANCINI", "COSTA", "GIORDANO", "RIZZO",
    "LOMBARDI", "MORETTI", "BARBIERI", "FONTANA", "SANTORO", "MARIANI", "RINALDI", "CARUSO",
    "FERRARA", "GALLI", "MARTINI", "LEONE", "LONGO", "GENTILE", "MARTINELLI", "VITALE",
    "SERRA", "COPPOLA", "DE SANTIS", "MARCHETTI", "LA ROSA", "LO BIANCO", "DI STEFANO",
    "LO PRESTI", "MUSUMECI", "SCUDERI", "PARODI", "CANEPA", "BRUZZONE", "PICASSO", "TRAVERSO",
    "REPETTO", "CAMBIASO", "PASTORINO", "PESCE", "OTTONELLO", "MOLINARI", "OLIVIERI", "CAVIGLIA",
    "DAMONTE", "PIAGGIO", "GHIGLIONE", "FERRANDO", "MERLO", "DORIA", "DE FERRARI", "ODDONE",
    "BOZZO", "PODESTÀ", "D'ANGELO", "D'AMICO", "D'ALESSANDRO", "DELL'ACQUA", "D'URSO",
    "DELL'ORTO", "D'AGOSTINO", "ZAPPALÀ", "SPANÒ", "CARIDÀ", "FOTÌ", "CANTÙ", "NICOLÒ",
    "BENVENUTO", "CAVANNA", "GAGGERO", "MARCENARO", "PERSICO", "QUEIROLO", "SCHIAFFINO",
    "TIXI", "VIGO", "ZUNINO", "ARDOINO", "BACIGALUPO", "BOERO", "CASSANELLO", "DELFINO",
    "FIGARI", "GANDOLFO", "LAGORIO", "MACCIÒ", "NOLI", "OLCESE", "PORCILE", "RAVERA", "SOLARI",
    "TERRILE", "URBANI", "VASSALLO", "ZERBINO", "AMORETTI", "BERTOLOTTO", "CHIAPPE",
    "DAPELO", "FOPPIANO", "GUIDO", "IVALDI", "LERTORA", "MUSSO", "NERVI", "PICCARDO", "ROSASCO",
    "SCOTTO", "TASSARA", "VALLE", "BAGNASCO", "CROCE", "DI BELLA", "FIORE", "GRASSO",
    "LA SPINA", "MESSINA", "PAGANO", "QUARTO", "SALERNO", "TROVATO", "VENTURA", "SCIUTTO",
    "ARECCO", "BISIO", "CALCAGNO", "DEMARTINI", "GIACCHERO", "MORCHIO", "PELUFFO", "REBORA",
    "ANSALDO", "BOTTARO", "CERRUTI", "DANOVARO", "FASCE", "GAZZOLO", "MAGGIOLO", "PIRAS",
    "SANNA", "MELIS", "CUCCU", "ESPOSTO", "RUGGIERO", "CAPUTO", "CARBONE", "GUERRA", "MARRA",
    "NERI", "ORLANDO", "PALUMBO", "SORRENTINO", "VITIELLO",
)
ITALIAN_MALE = (
    "MARIO", "GIUSEPPE", "GIOVANNI", "ANTONIO", "LUIGI", "FRANCESCO", "ANGELO", "VINCENZO",
    "PIETRO", "SALVATORE", "CARLO", "FRANCO", "DOMENICO", "BRUNO", "PAOLO", "MICHELE",
    "GIORGIO", "ALDO", "SERGIO", "LUCIANO", "ROBERTO", "STEFANO", "ANDREA", "MARCO",
    "ALESSANDRO", "MATTEO", "LORENZO", "LEONARDO", "FEDERICO", "RICCARDO", "GABRIELE",
    "TOMMASO", "EMANUELE", "SIMONE", "DAVIDE", "GIACOMO", "FILIPPO", "LUCA", "GIANFRANCO",
    "GIAN PIERO", "PIER LUIGI", "CRISTIAN", "NICOLA", "NICOLÒ", "NICCOLÒ", "GIOSUÈ", "NOÈ",
)
ITALIAN_FEMALE = (
    "MARIA", "ANNA", "GIUSEPPINA", "ROSA", "ANGELA", "GIOVANNA", "TERESA", "LUCIA", "CARMELA",
    "CATERINA", "FRANCESCA", "ANNA MARIA", "LAURA", "PAOLA", "ELENA", "CHIARA", "SARA",
    "GIULIA", "MARTINA", "SOFIA", "AURORA", "ALICE", "GINEVRA", "BEATRICE", "EMMA", "GIORGIA",
    "FEDERICA", "SILVIA", "VALENTINA", "ROSSANA", "IRENE", "NOEMI", "BENEDETTA", "ASSUNTA",
    "CONCETTA", "IMMACOLATA", "MARIA GRAZIA", "ROSARIA", "GRAZIELLA", "AGNESE", "NICOLETTA",
    "MARIÙ",
)
#: Foreign surnames -> origin group; groups -> (birth Z-codes, ISTAT citizenship, males, females)
FOREIGN_GROUPS = {
    "hisp": (("Z605", "609"), ("Z611", "615")),
    "alb": (("Z100", "201"),),
    "rom": (("Z129", "235"),),
    "arab": (("Z330", "436"), ("Z352", "460"), ("Z336", "419")),
    "wafr": (("Z343", "450"), ("Z335", "443")),
    "chn": (("Z210", "314"),),
    "slav": (("Z138", "243"),),
    "arg": (("Z600", "602"),),
}
FOREIGN_SURNAMES = (
    ("ZAMBRANO", "hisp"), ("GARCÍA", "hisp"), ("QUISPE", "hisp"), ("CEDEÑO", "hisp"),
    ("VILLACÍS", "hisp"), ("HOXHA", "alb"), ("SHEHU", "alb"), ("KOÇI", "alb"), ("DERVISHI", "alb"),
    ("POPESCU", "rom"), ("IONESCU", "rom"), ("MUNTEANU", "rom"), ("EL AMRANI", "arab"),
    ("BENALI", "arab"), ("TRABELSI", "arab"), ("EL KHATIB", "arab"), ("DIOP", "wafr"),
    ("NDIAYE", "wafr"), ("OKAFOR", "wafr"), ("CHEN", "chn"), ("ZHOU", "chn"),
    ("KOVALENKO", "slav"), ("SHEVCHENKO", "slav"), ("FERNÁNDEZ", "arg"),
)
FOREIGN_NAMES = {
    "hisp": (("JOSÉ", "LUIS", "JUAN CARLOS", "ANDRÉS", "JESÚS"),
             ("MARÍA", "ANA", "MARÍA JOSÉ", "JESSICA", "MÓNICA")),
    "alb": (("ARBEN", "ERMAL", "ENDRIT", "ILIR"), ("ELIRA", "BLERINA", "ALBANA", "ANISA")),
    "rom": (("ANDREI", "IOAN", "MIHAI", "IONUT"), ("ELENA", "MIHAELA", "ANDREEA", "IOANA")),
    "arab": (("MOHAMED", "YOUSSEF", "RACHID", "KARIM"), ("FATIMA", "KHADIJA", "SAMIRA", "LEILA")),
    "wafr": (("MAMADOU", "MODOU", "CHEIKH", "EMEKA"), ("FATOU", "AMINATA", "AWA", "NGOZI")),
    "chn": (("WEI", "JIAN", "HAO", "MING"), ("XIAOLI", "MEI", "LING", "YAN")),
    "slav": (("ANDRIY", "OLEKSANDR", "DMYTRO", "MYKOLA"), ("OKSANA", "OLENA", "IRYNA", "HALYNA")),
    "arg": (("MARTÍN", "SANTIAGO", "NICOLÁS", "DIEGO"), ("LUCÍA", "VALENTINA", "CAMILA", "SOFÍA")),
}
BIRTH_OTHER = ("I480", "E463", "C621", "H183", "I693", "E290", "I138", "E488", "F205", "L219",
               "H501", "F839", "G273", "C351", "A662", "D122", "L781")
BIRTH_ABROAD_ITALIANS = ("Z600", "Z133", "Z110", "Z112", "Z103")
NON_RESIDENT_COMUNI = ("A388", "H212", "B490", "B282", "I346", "F098", "C481", "E488", "I225",
                       "C621", "H183", "I480", "F205")
GENOVA_STREETS = (
    "Via XX Settembre", "Corso Sardegna", "Via Balbi", "Via Antonio Cantore", "Corso Buenos Aires",
    "Corso Europa", "Via Prè", "Via San Luca", "Via del Campo", "Via Assarotti", "Corso Torino",
    "Via Giacometti", "Via Rolando", "Via Cornigliano", "Via Merano", "Via Piacenza",
    "Via Stefano Türr", "Via Tolemaide", "Corso De Stefanis", "Via Bobbio", "Via di Francia",
    "Vico Dritto di Ponticello", "Salita San Nicolò", "Piazza Banchi", "Via Burlando",
    "Via Molassana", "Lungomare di Pegli", "Via Multedo di Pegli", "Via Sestri", "Corso Italia",
    "Via Terpi", "Via Adamoli", "Piazza Manin", "Via Canevari", "Via Fereggiano", "Via Borzoli",
    "Via Chiaravagna", "Piazza della Nunziata", "Via Luccoli", "Salita Oregina",
    "Via dell'Acquasola", "Via Jori", "Via Pellegrini", "Via Soliman", "Via Prà",
)
OTHER_STREETS = ("Via Roma", "Via Aurelia", "Via Garibaldi", "Via Mazzini", "Piazza Matteotti",
                 "Via XXV Aprile", "Via della Chiesa", "Via Provinciale")

RICHIESTE = (
    ("ECO", "Contributo economico"), ("DOM", "Assistenza domiciliare"),
    ("RES", "Inserimento residenziale"), ("INF", "Informazioni e orientamento"),
    ("ABI", "Sostegno abitativo"), ("EDU", "Sostegno educativo"),
    ("TRA", "Trasporto sociale"), ("LAV", "Inserimento lavorativo"),
)
PROBLEMI = (
    ("ECO", "Difficoltà economiche"), ("ABI", "Disagio abitativo"), ("SAL", "Problemi di salute"),
    ("DIS", "Disabilità"), ("MIN", "Tutela minori"), ("DIP", "Dipendenze"),
    ("VIO", "Violenza domestica o di genere"), ("ANZ", "Non autosufficienza"),
)
TIPI_SEGNALANTE = (("CIT", 35), ("FAM", 25), ("SAN", 15), ("SCU", 8), ("FFO", 6), ("TRI", 5),
                   ("ALT", 6))
SEGNALANTI = {
    "SAN": ("ASL3 Genovese – SerD", "Ospedale San Martino – reparto di geriatria",
            "E.O. Ospedali Galliera", "Medico di base dott. Parodi", "Consultorio familiare Sestri",
            "Istituto Giannina Gaslini"),
    "SCU": ("I.C. Sampierdarena", "I.C. Molassana – dirigente scolastica",
            "Scuola dell’infanzia “Il Girasole”", "Liceo Cassini", "I.C. Prà"),
    "FFO": ("Carabinieri Staz. Rivarolo", "Polizia Locale – Nucleo Sicurezza Urbana",
            "Questura di Genova", "Carabinieri Staz. Sestri Ponente"),
    "TRI": ("Tribunale per i Minorenni di Genova", "Tribunale di Genova – Giudice tutelare",
            "Procura della Repubblica"),
    "ALT": ("Caritas diocesana", "Comunità di Sant’Egidio", "Parrocchia di San Siro",
            "Associazione “Il Melograno”", "Amministratore di condominio"),
}
FAM_REL = ("figlia", "figlio", "moglie", "marito", "sorella", "fratello", "nipote", "vicina di casa")
NOTES = (
    "Richiesta contributo affitto; in attesa di documentazione",
    "Contributo economico straordinario di 150,00 € erogato a marzo",
    "L’utente riferisce difficoltà nel pagamento delle utenze",
    "Segnalazione del medico curante: necessità di assistenza domiciliare",
    "Nucleo monogenitoriale con 2 figli minori; la madre è disoccupata",
    "Colloquio con l’assistente sociale il 12/03 – da ricontattare",
    'Dichiara di vivere "in casa di amici" da 3 mesi',
    "Anziano solo, parzialmente non autosufficiente. Verificare idoneità per RSA",
    "Pagato buono spesa da 80 €",
    "Ha già usufruito del bonus sociale nell’anno precedente",
    "Richiede accompagnamento per visite in ospedale (San Martino, Galliera)",
    "La figlia riferisce “grave stato di abbandono” dell’abitazione",
    "Più accessi allo sportello; già noto al servizio",
    "Inviata richiesta al CAF per ISEE aggiornato.\r\nDa verificare residenza",
    "Prima presa in carico\r\nsecondo colloquio fissato",
    "Sfratto esecutivo previsto per il mese prossimo – urgente",
    "Barriere architettoniche: abita al 4° piano senza ascensore",
    "Caso già seguito dal distretto di Sampierdarena; verificare con l’operatore",
)
TXT_VALUES = {
    "CTX04": ("Vive con la figlia", "Rete familiare assente", "Figli all’estero, contatti telefonici",
              "Coniuge anziano – anch’egli fragile", "Supporto della vicina di casa"),
    "COG04": ("Collaborante", "Lievemente disorientato/a", "Umore deflesso; rifiuta l’aiuto",
              "Buona capacità di giudizio", "Agitazione serale (“sundowning”)"),
    "PRG01": ("Mantenimento al domicilio", "Recupero autonomie", "Inserimento in struttura",
              "Sostegno al caregiver – sollievo", "Monitoraggio della situazione"),
    "PRG02": ("ADA 6 h/settimana", "Pasti a domicilio", "Telesoccorso", "Centro diurno – 3 giorni",
              "Contributo economico 250,00 €/mese"),
}
SERVIZI = ("ATS01", "ATS02", "ATS03", "ATS04", "ATS05", "ATS06", "ATS07", "ATS08", "ATS09",
           "UCST", "UCIL")
TIPIZZAZIONI = ("MIN", "ANZ", "DIS", "ADU", "FAM", "IMM")
# cod, descrizione, macro_area, tipo_periodo, unita, attivo, data_inizio, data_fine, unit cents
TAB_INTERVENTO = (
    ("ADA01", "Assistenza domiciliare anziani", "ANZ", "M", "ORA", 1, "2008-01-01", None, 1950),
    ("ADD01", "Assistenza domiciliare disabili", "DIS", "M", "ORA", 1, "2008-01-01", None, 2100),
    ("CEC01", "Contributo economico continuativo", "ADU", "M", "EUR", 1, "2008-01-01", None, 25000),
    ("CES01", "Contributo economico straordinario", "FAM", "P", "EUR", 1, "2008-01-01", None, 15000),
    ("RSA01", "Retta RSA – integrazione comunale", "ANZ", "G", "GIO", 1, "2008-01-01", None, 8550),
    ("EDT01", "Educativa territoriale minori", "MIN", "M", "ORA", 1, "2009-06-01", None, 2350),
    ("TRS01", "Trasporto sociale", "DIS", "P", "ACC", 1, "2008-01-01", None, 1200),
    ("AFF01", "Affido familiare – contributo alla famiglia affidataria", "MIN", "M", "EUR", 1,
     "2008-01-01", None, 40000),
    ("CDI01", "Centro diurno integrato", "ANZ", "G", "GIO", 1, "2011-01-01", None, 3200),
    ("PAS01", "Pasti a domicilio", "ANZ", "G", "GIO", 1, "2008-01-01", None, 650),
    ("DIV01", "Interventi diversi – buoni spesa", "FAM", "P", "EUR", 1, "2020-03-15", None, 8000),
    ("DIV02", "Interventi diversi – utenze domestiche", "ADU", "P", "EUR", 1, "2012-01-01", None,
     12000),
    ("DIV03", "Interventi diversi – social card comunale", "ADU", "P", "EUR", 0, "2010-01-01",
     "2018-12-31", 5000),
    ("DIV04", "Interventi diversi – emergenza abitativa", "ADU", "P", "EUR", 1, "2015-01-01", None,
     30000),
    ("INS01", "Borsa lavoro / tirocinio di inclusione", "ADU", "M", "EUR", 1, "2013-01-01", None,
     40000),
)
TAB_INTERVENTO_BY_CODE = {row[0]: row for row in TAB_INTERVENTO}
INTERVENTI_BY_AREA = {
    "ANZ": ("ADA01", "RSA01", "CDI01", "PAS01", "TRS01", "CES01"),
    "DIS": ("ADD01", "TRS01", "CDI01", "CEC01"),
    "MIN": ("EDT01", "AFF01", "CES01", "DIV01"),
    "ADU": ("CEC01", "CES01", "DIV01", "DIV02", "DIV03", "DIV04", "INS01"),
    "FAM": ("CES01", "DIV01", "DIV02", "EDT01", "CEC01"),
    "IMM": ("CES01", "DIV01", "INS01", "DIV04"),
}
NEEDS_FORNITORE = frozenset(("ADA01", "ADD01", "RSA01", "EDT01", "TRS01", "CDI01", "PAS01"))
FORNITORI = (
    "Cooperativa Sociale Il Melograno", "Consorzio Agorà", "RSA Villa Serena S.r.l.",
    "Coop. Soc. Il Sentiero di Arianna", "Fondazione Casa dell’Anziano", "La Comunità Soc. Coop.",
    "Cooperativa Saba", "Residenza Sant’Anna S.r.l.", "Coop. Soc. Progetto Città",
    "Consorzio Sociale Agorà – ATI Valpolcevera", "Trasporti Solidali ODV",
    "Centro Diurno “Le Rondini”", "Coop. Soc. Il Biscione", "Ristorazione Ligure S.p.A.",
    "Fondazione Don Gnocchi – sede di Genova", "Coop. Soc. Lanza del Vasto",
    "Croce Bianca Genovese", "Pubblica Assistenza Fratellanza Leone", "Associazione San Marcellino",
    "Villa Immacolata S.r.l.",
)
ABI_CODES = ("06175", "03069", "02008", "05034", "07601", "03032", "01030", "05387")

# Scheda tecnica: sections, modules, items ------------------------------------------------------
ST_SEZIONI = ((1, "ANA", "Dati di contesto", 1), (2, "VAL", "Valutazione multidimensionale", 2),
              (3, "PRO", "Progetto e servizi", 3))
ST_MODULI = ((1, 1, "CTX", "Contesto familiare", 1), (2, 1, "ABI", "Condizione abitativa", 2),
             (3, 2, "FUN", "Autonomia funzionale", 1),
             (4, 2, "COG", "Area cognitiva e comportamentale", 2),
             (5, 2, "SAN", "Area sanitaria e sociale", 3),
             (6, 3, "PRG", "Progetto individualizzato", 1))
# id, modulo, codice, descrizione, tipo, dimensione, peso (cents), valido_dal, valido_al
ST_VOCI = (
    (1, 1, "CTX01", "Vive solo/a", "SN", None, None, "2012-09-01", None),
    (2, 1, "CTX02", "Numero componenti del nucleo", "NUM", None, None, "2012-09-01", None),
    (3, 1, "CTX03", "Rete familiare di supporto", "PIA", "SOC", 100, "2012-09-01", None),
    (4, 1, "CTX04", "Note sul contesto familiare", "TXT", None, None, "2012-09-01", None),
    (5, 2, "ABI01", "Barriere architettoniche", "SN", None, None, "2012-09-01", None),
    (6, 2, "ABI02", "Adeguatezza dell'abitazione", "PIA", "SOC", 100, "2012-09-01", None),
    (7, 2, "ABI03", "Piano dell'abitazione", "NUM", None, None, "2012-09-01", "2018-12-31"),
    (8, 3, "FUN01", "Mobilità e deambulazione", "PIA", "MOB", 200, "2012-09-01", None),
    (9, 3, "FUN02", "Trasferimenti letto-sedia", "PIA", "MOB", 150, "2012-09-01", None),
    (10, 3, "FUN03", "Igiene personale", "PIA", "ADL", 150, "2012-09-01", None),
    (11, 3, "FUN04", "Alimentazione", "PIA", "ADL", 100, "2012-09-01", None),
    (12, 3, "FUN05", "Uso del telefono e gestione del denaro (IADL)", "PIA", "ADL", 100,
     "2012-09-01", None),
    (13, 4, "COG01", "Orientamento spazio-temporale", "PIA", "COG", 200, "2012-09-01", None),
    # id 14 (COG02 "Memoria") was deleted by the administrators in 2016: st_valore rows pointing
    # to it survived (orphan_voce).
    (15, 4, "COG03", "Disturbi del comportamento", "PIA", "COM", 150, "2012-09-01", None),
    (16, 4, "COG04", "Osservazioni dell'operatore", "TXT", None, None, "2012-09-01", None),
    (17, 5, "SAN01", "Condizioni di salute e patologie", "PIA", "SAN", 200, "2012-09-01", None),
    (18, 5, "SAN02", "Numero di farmaci assunti", "NUM", None, None, "2012-09-01", None),
    (19, 5, "SAN03", "Invalidità civile riconosciuta", "SN", None, None, "2012-09-01", None),
    (20, 5, "SAN04", "Supporto sociale e relazioni", "PIA", "SOC", 100, "2012-09-01", None),
    (21, 5, "SAN05", "Bisogno di assistenza notturna", "PIA", "SAN", 150, "2014-01-01", None),
    (22, 6, "PRG01", "Obiettivi del progetto", "TXT", None, None, "2012-09-01", None),
    (23, 6, "PRG02", "Servizi attivati", "TXT", None, None, "2012-09-01", None),
    (24, 6, "PRG03", "Ore settimanali previste", "NUM", None, None, "2012-09-01", None),
    (25, 6, "PRG04", "Consenso dell'interessato", "SN", None, None, "2012-09-01", None),
    (26, 6, "PRG05", "Valutazione complessiva del bisogno", "PIA", "SOC", 100, "2012-09-01", None),
)
DELETED_VOCE = 14
PIA_WEIGHTS = {v[0]: v[6] for v in ST_VOCI if v[4] == "PIA"}
OTHER_VOCI = tuple(v for v in ST_VOCI if v[4] != "PIA")

# Dirty / near-miss schedule: per block of 200 real persons, these kinds are dealt to shuffled
# positions (so every kind appears even for small N).
BLOCK = 200
SCHEDULE = (
    ("cf_typo", 3), ("name_typo", 3), ("different_cf_same_data", 3),
    ("impossible_birth_date", 2), ("invalid_cf", 2),
    ("orphan_person:presa_in_carico", 1), ("orphan_person:segnalazione", 1),
    ("orphan_person:st_scheda", 1), ("orphan_person:isee", 1), ("orphan_person:intervento", 3),
    ("orphan_pic", 3), ("orphan_voce", 5), ("orphan_operatore", 2),
    ("closure_before_opening", 2), ("negative_amount", 4), ("duplicate_intervento", 4),
)
NEAR_MISS_KINDS = ("cf_typo", "name_typo", "different_cf_same_data")
DIRTY_KINDS = ("orphan_person", "orphan_pic", "orphan_voce", "orphan_operatore",
               "impossible_birth_date", "closure_before_opening", "invalid_cf",
               "negative_amount", "duplicate_intervento")
FORCED_SYSTEM = {
    "orphan_person:presa_in_carico": "web_distretti", "orphan_person:segnalazione": "segretariato",
    "orphan_person:st_scheda": "scheda_tecnica", "orphan_person:isee": "web_distretti",
    "orphan_person:intervento": "web_distretti", "orphan_pic": "web_distretti",
    "orphan_voce": "scheda_tecnica", "orphan_operatore": "web_distretti",
    "closure_before_opening": "web_distretti", "negative_amount": "web_distretti",
    "duplicate_intervento": "web_distretti",
}
SINGLE_WEIGHTS = (("segretariato", 35), ("web_distretti", 45), ("scheda_tecnica", 20))
PAIR_WEIGHTS = ((("segretariato", "web_distretti"), 50), (("web_distretti", "scheda_tecnica"), 30),
                (("segretariato", "scheda_tecnica"), 20))


def weighted(rng: random.Random, items):
    total = sum(w for _, w in items)
    x = rng.random() * total
    for item, w in items:
        x -= w
        if x < 0:
            return item
    return items[-1][0]


def build_surname_pool():
    """Surnames with pairwise distinct CF codes (first occurrence wins): (surname, group)."""
    seen, pool = set(), []
    for s, group in [(s, None) for s in ITALIAN_SURNAMES] + list(FOREIGN_SURNAMES):
        code = surname_code(s)
        if code not in seen:
            seen.add(code)
            pool.append((s, group))
    return tuple(pool)


SURNAMES = build_surname_pool()
N_DAYS = (BIRTH_LAST - BIRTH_FIRST).days + 1
BIRTH_ORD0 = BIRTH_FIRST.toordinal()
MAX_PERSONS = len(SURNAMES) * N_DAYS


class Permutation:
    """Feistel bijection of [0, M) (cycle walking): real person i -> (surname, birth day)."""

    def __init__(self, size: int, seed):
        self.size = size
        bits = max(2, (size - 1).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.mask = (1 << self.half) - 1
        krng = random.Random(f"{seed}:permutation")
        self.keys = tuple(krng.getrandbits(32) for _ in range(4))

    def _round(self, x: int) -> int:
        half, mask = self.half, self.mask
        left, right = x >> half, x & mask
        for key in self.keys:
            h = ((right ^ key) * 0x45D9F3B) & 0xFFFFFFFF
            h ^= h >> 16
            h = (h * 0x45D9F3B) & 0xFFFFFFFF
            h ^= h >> 16
            left, right = right, left ^ (h & mask)
        return (left << half) | right

    def __call__(self, x: int) -> int:
        y = self._round(x)
        while y >= self.size:
            y = self._round(y)
        return y


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def iso(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


def rand_day(rng: random.Random, lo: int, hi: int) -> int:
    return lo if hi <= lo else lo + int(rng.random() * (hi - lo + 1))


def rand_time(rng: random.Random) -> str:
    sec = 8 * 3600 + int(rng.random() * 10 * 3600)
    return f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def cents_str(cents: int, sep: str = ".") -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}{sep}{cents % 100:02d}"


def shift_years(d: dt.date, years: int) -> dt.date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def title_name(s: str) -> str:
    return s.title()


def render_name(canon: str, style: str, rng: random.Random | None) -> str:
    """Display form of a canonical (upper-case, accented) name in a system.

    ``style`` is upper / title / lower; with ``rng`` a random data-entry variant is applied
    (apostrophe replaced or dropped, accent typed as apostrophe or dropped, doubled inner
    space, trailing space).  All variants have the same
    ``letters_only`` normalisation.
    """
    s = canon
    if rng is not None:
        v = rng.random()
        if "'" in s and v < 0.5:
            s = s.replace("'", rng.choice((" ", "", "’", "' ")))
        elif any(ch in s for ch in "ÀÈÉÌÒÙ") and v < 0.6:
            if rng.random() < 0.6:
                s = "".join(unicodedata.normalize("NFD", ch)[0] + "'" if ch in "ÀÈÉÌÒÙ" else ch
                            for ch in s)
            else:
                s = letters_only(s) if " " not in s else s.translate(
                    str.maketrans("ÀÈÉÌÒÙ", "AEEIOU"))
        elif " " in s and v < 0.7:
            s = s.replace(" ", "  ", 1)
        if rng.random() < 0.1:
            s = s + " "
    if style == "title":
        return title_name(s)
    if style == "lower":
        return s.lower()
    return s


SYSTEM_STYLE = {"segretariato": "upper", "web_distretti": "title", "scheda_tecnica": "title"}


def name_typo(name: str, rng: random.Random, pool: frozenset) -> str:
    """One-letter data-entry error: drop a doubled letter, double a consonant, or replace a
    vowel by another of the same "sex-neutral" kind (never a final a/o swap)."""
    for _ in range(20):
        letters = list(name)
        k = rng.random()
        doubled = [p for p in range(1, len(letters)) if letters[p] == letters[p - 1]
                   and letters[p].isalpha()]
        if doubled and k < 0.5:
            p = rng.choice(doubled)
            del letters[p]
        elif k < 0.8:
            cons = [p for p in range(1, len(letters) - 1)
                    if letters[p].isalpha() and letters[p] not in "AEIOUÀÈÉÌÒÙ "]
            if not cons:
                continue
            p = rng.choice(cons)
            letters.insert(p, letters[p])
        else:
            inner = [p for p in range(1, len(letters) - 1) if letters[p] in "AEIOU"]
            if not inner:
                continue
            p = rng.choice(inner)
            letters[p] = rng.choice([v for v in "AEIOU" if v != letters[p]])
        out = "".join(letters)
        if letters_only(out) != letters_only(name) and out not in pool:
            return out
    return name + "A" if name[-1] != "A" else name + "E"


ALL_FIRST_NAMES = frozenset(ITALIAN_MALE + ITALIAN_FEMALE
                            + tuple(n for g in FOREIGN_NAMES.values() for p in g for n in p))


# ---------------------------------------------------------------------------------------------
# Output sinks
# ---------------------------------------------------------------------------------------------

SQLITE_TYPES = {"id": "INTEGER", "int": "INTEGER", "str": "TEXT", "text": "TEXT", "date": "TEXT",
                "datetime": "TEXT", "dec": "TEXT", "dec5": "TEXT", "bit": "INTEGER"}
PG_TYPES = {"id": "bigint", "int": "bigint", "str": "text", "text": "text", "date": "date",
            "datetime": "timestamp", "dec": "numeric(12,2)", "dec5": "numeric(5,2)",
            "bit": "smallint"}


class Sink:
    """Per-table buffers flushed every CHUNK rows; rows are tuples in internal form
    (ints, str, None; dates as ISO text; decimals as integer cents)."""

    def __init__(self, out: Path):
        self.out = out
        self.buffers = {(s, t): [] for s in SYSTEMS for t in SCHEMA[s]}
        self.counts = {(s, t): 0 for s in SYSTEMS for t in SCHEMA[s]}
        self.dec_cols = {}
        for s in SYSTEMS:
            for t, (cols, _) in SCHEMA[s].items():
                self.dec_cols[(s, t)] = tuple(k for k, (_, ty) in enumerate(cols)
                                              if ty in ("dec", "dec5"))

    def add(self, system: str, table: str, row: tuple) -> None:
        buf = self.buffers[(system, table)]
        buf.append(row)
        if len(buf) >= CHUNK:
            self.flush(system, table)

    def flush(self, system: str, table: str) -> None:
        buf = self.buffers[(system, table)]
        if buf:
            self.counts[(system, table)] += len(buf)
            self.write(system, table, buf)
            buf.clear()

    def close(self) -> None:
        for s in SYSTEMS:
            for t in SCHEMA[s]:
                self.flush(s, t)
        self.finish()

    def write(self, system, table, rows):  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self):
        pass


class SqliteSink(Sink):
    def __init__(self, out: Path):
        super().__init__(out)
        self.conns = {}
        self.sql = {}
        for s in SYSTEMS:
            path = out / f"{s}.sqlite"
            if path.exists():
                path.unlink()
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            for t, (cols, pk) in SCHEMA[s].items():
                defs = []
                for name, ty in cols:
                    d = f"{name} {SQLITE_TYPES[ty]}"
                    if len(pk) == 1 and name == pk[0]:
                        d += " PRIMARY KEY"
                    elif name not in pk and not self._nullable(s, t, name):
                        d += " NOT NULL"
                    defs.append(d)
                if len(pk) > 1:
                    defs.append(f"PRIMARY KEY ({', '.join(pk)})")
                conn.execute(f"CREATE TABLE {t} (\n  " + ",\n  ".join(defs) + "\n)")
                self.sql[(s, t)] = (f"INSERT INTO {t} VALUES ({', '.join('?' * len(cols))})")
            conn.execute("COMMIT")
            self.conns[s] = conn

    @staticmethod
    def _nullable(system, table, col):
        return col in NULLABLE.get(table, ())

    def write(self, system, table, rows):
        decs = self.dec_cols[(system, table)]
        if decs:
            conv = []
            for r in rows:
                r = list(r)
                for k in decs:
                    if r[k] is not None:
                        r[k] = cents_str(r[k])
                conv.append(r)
            rows = conv
        conn = self.conns[system]
        conn.execute("BEGIN")
        conn.executemany(self.sql[(system, table)], rows)
        conn.execute("COMMIT")

    def finish(self):
        for conn in self.conns.values():
            conn.close()


NULLABLE = {
    "anagrafica": ("codice_fiscale", "data_decesso"),
    "segnalazione": ("segnalante", "id_anagrafica_segnalante", "note"),
    "presa_in_carico": ("data_chiusura", "cod_motivo_chiusura"),
    "pic_operatore": ("data_fine",),
    "tab_intervento": ("data_fine",),
    "intervento": ("data_fine", "id_fornitore"),
    "st_voce": ("dimensione_pia", "peso_pia", "valido_al"),
    "st_scheda": ("pia_totale",),
    "st_valore": ("data_fine_validita",),
}


def pg_escape(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


class PgSink(Sink):
    def __init__(self, out: Path):
        super().__init__(out)
        self.files = {}
        for s in SYSTEMS:
            fh = open(out / f"{s}.sql", "w", encoding="utf-8", newline="\n")
            fh.write(f"-- Legacy system '{s}' (synthetic data, gen_legacy_db.py)\n"
                     "-- Load with: psql -v ON_ERROR_STOP=1 -f " + f"{s}.sql\n"
                     "SET client_encoding = 'UTF8';\n"
                     "SET standard_conforming_strings = on;\n"
                     f"DROP SCHEMA IF EXISTS {s} CASCADE;\n"
                     f"CREATE SCHEMA {s};\n\n")
            for t, (cols, pk) in SCHEMA[s].items():
                defs = []
                for name, ty in cols:
                    d = f"    {name} {PG_TYPES[ty]}"
                    if name not in pk and not SqliteSink._nullable(s, t, name):
                        d += " NOT NULL"
                    defs.append(d)
                defs.append(f"    PRIMARY KEY ({', '.join(pk)})")
                fh.write(f"CREATE TABLE {s}.{t} (\n" + ",\n".join(defs) + "\n);\n")
            fh.write("\n")
            self.files[s] = fh

    def write(self, system, table, rows):
        cols = SCHEMA[system][table][0]
        decs = set(self.dec_cols[(system, table)])
        fh = self.files[system]
        fh.write(f"COPY {system}.{table} ({', '.join(c for c, _ in cols)}) FROM stdin;\n")
        lines = []
        for r in rows:
            fields = []
            for k, v in enumerate(r):
                if v is None:
                    fields.append("\\N")
                elif k in decs:
                    fields.append(cents_str(v))
                elif isinstance(v, int):
                    fields.append(str(v))
                else:
                    fields.append(pg_escape(v))
            lines.append("\t".join(fields))
        lines.append("\\.\n")
        fh.write("\n".join(lines))

    def finish(self):
        for s, fh in self.files.items():
            fh.write("\nANALYZE;\n")
            fh.close()


class CsvSink(Sink):
    def __init__(self, out: Path):
        super().__init__(out)
        self.files, self.writers = {}, {}
        self.kinds = {}
        for s in SYSTEMS:
            (out / s).mkdir(parents=True, exist_ok=True)
            for t, (cols, _) in SCHEMA[s].items():
                fh = open(out / s / f"{t}.csv", "w", encoding="cp1252", newline="")
                w = csv.writer(fh, delimiter=";", quotechar='"', lineterminator="\r\n",
                               quoting=csv.QUOTE_MINIMAL)
                w.writerow([c for c, _ in cols])
                self.files[(s, t)], self.writers[(s, t)] = fh, w
                self.kinds[(s, t)] = tuple(ty for _, ty in cols)

    def write(self, system, table, rows):
        kinds = self.kinds[(system, table)]
        out = []
        for r in rows:
            fields = []
            for ty, v in zip(kinds, r):
                if v is None:
                    fields.append("")
                elif ty == "date":
                    fields.append(f"{v[8:10]}/{v[5:7]}/{v[0:4]}")
                elif ty == "datetime":
                    fields.append(f"{v[8:10]}/{v[5:7]}/{v[0:4]}{v[10:]}")
                elif ty in ("dec", "dec5"):
                    fields.append(cents_str(v, ","))
                else:
                    fields.append(v)
            out.append(fields)
        self.writers[(system, table)].writerows(out)

    def finish(self):
        for fh in self.files.values():
            fh.close()


SINKS = {"sqlite": SqliteSink, "pgsql": PgSink, "csv": CsvSink}


# ---------------------------------------------------------------------------------------------
# Ground truth spool
# ---------------------------------------------------------------------------------------------

class Spool:
    """A list written as JSON lines to a temporary file (flat memory), counted."""

    def __init__(self):
        self.fh = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.n = 0

    def add(self, obj) -> None:
        self.fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.n += 1

    def dump(self, out, indent: str) -> None:
        self.fh.seek(0)
        first = True
        for line in self.fh:
            out.write(("\n" if first else ",\n") + indent + line.rstrip("\n"))
            first = False
        if not first:
            out.write("\n" + indent[:-2])


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------

class Generator:
    def __init__(self, persons: int, seed, sink: Sink):
        if persons > MAX_PERSONS:
            raise SystemExit(f"--persons is limited to {MAX_PERSONS}")
        self.n = persons
        self.seed = seed
        self.sink = sink
        self.perm = Permutation(MAX_PERSONS, seed)
        # sequential id counters per system / table
        self.next_id = {(s, t): 1 for s in SYSTEMS for t in SCHEMA[s]}
        for s, first in ANAGRAFICA_FIRST_ID.items():
            self.next_id[(s, "anagrafica")] = first
        self.last_anag = {s: None for s in SYSTEMS}
        self.nucleo = None        # (id_nucleo, size) of the family unit being filled
        self.n_operatori = persons // 50 + 5
        self.block_no, self.block = -1, ()
        self.dirty = Spool()
        self.clusters = Spool()
        self.near = Spool()
        self.pia_mismatch = Spool()
        self.pia_schede = 0
        self.pia_null = 0
        self.dirty_counts = {k: 0 for k in DIRTY_KINDS}
        self.cluster_counts = {"same_cf": 0, "missing_cf": 0}
        self.cluster_members = 0
        self.near_counts = {k: 0 for k in NEAR_MISS_KINDS}
        self.omit_clusters = persons >= OMIT_CLUSTERS_FROM

    # ids -----------------------------------------------------------------------------------
    def new_id(self, system: str, table: str) -> int:
        key = (system, table)
        value = self.next_id[key]
        self.next_id[key] = value + 1
        return value

    def gap_id(self, system: str, table: str) -> int:
        """Consume an id without inserting the row: a record deleted in the legacy system."""
        return self.new_id(system, table)

    def add_dirty(self, system, table, key, kind, **extra):
        entry = {"system": system, "table": table, "key": str(key), "kind": kind}
        entry.update(extra)
        self.dirty.add(entry)
        self.dirty_counts[kind] += 1

    # operators ----------------------------------------------------------------------------
    @staticmethod
    def operatore_id(j: int) -> int:
        """Ids of operators skip every multiple of 25 (deleted users)."""
        return j + 1 + j // 24

    def orphan_operatore_id(self, rng) -> int:
        last = self.operatore_id(self.n_operatori - 1)
        gaps = last // 25
        return 25 * (1 + int(rng.random() * gaps)) if gaps else last + 1 + int(rng.random() * 5)

    def operatore_name(self, j: int):
        r = random.Random(f"{self.seed}:op:{j}")
        surname, _ = SURNAMES[int(r.random() * len(SURNAMES))]
        female = r.random() < 0.75
        name = r.choice(ITALIAN_FEMALE if female else ITALIAN_MALE)
        return surname, name, r

    # static tables -------------------------------------------------------------------------
    def static_tables(self):
        add = self.sink.add
        for cod, descr in RICHIESTE:
            add("segretariato", "tab_richiesta", (cod, descr))
        for cod, descr in PROBLEMI:
            add("segretariato", "tab_problema", (cod, descr))
        for row in TAB_INTERVENTO:
            add("web_distretti", "tab_intervento", row[:8])
        r = random.Random(f"{self.seed}:fornitori")
        for k, ragione in enumerate(FORNITORI, 1):
            first10 = "".join(str(r.randrange(10)) for _ in range(7)) + f"{r.randrange(1, 100):03d}"
            piva = first10 + piva_check(first10)
            if k in (7, 16):  # two suppliers with a wrong check digit (typed by hand)
                piva = first10 + str((int(piva[-1]) + 3) % 10)
            iban = iban_it(r.choice(ABI_CODES), f"{r.randrange(1000, 99999):05d}",
                           f"{r.randrange(10 ** 11, 10 ** 12):012d}")
            add("web_distretti", "fornitore", (k, ragione, piva, iban))
        for j in range(self.n_operatori):
            surname, name, r = self.operatore_name(j)
            qual = weighted(r, (("AS", 60), ("ED", 20), ("PS", 8), ("AM", 12)))
            add("web_distretti", "operatore",
                (self.operatore_id(j), title_name(surname), title_name(name), qual,
                 0 if r.random() < 0.15 else 1))
        for row in ST_SEZIONI:
            add("scheda_tecnica", "st_sezione", row)
        for row in ST_MODULI:
            add("scheda_tecnica", "st_modulo", row)
        for row in ST_VOCI:
            add("scheda_tecnica", "st_voce", row)

    # schedule -------------------------------------------------------------------------------
    def kind_of(self, i: int) -> str:
        b = i // BLOCK
        if b != self.block_no:
            slots = []
            for kind, count in SCHEDULE:
                slots.extend([kind] * count)
            slots.extend(["normal"] * (BLOCK - len(slots)))
            random.Random(f"{self.seed}:block:{b}").shuffle(slots)
            self.block_no, self.block = b, tuple(slots)
        return self.block[i % BLOCK]

    # identity --------------------------------------------------------------------------------
    def identity(self, i: int, rng: random.Random) -> dict:
        p = self.perm(i)
        surname, group = SURNAMES[p % len(SURNAMES)]
        birth_ord = BIRTH_ORD0 + p // len(SURNAMES)
        birth = dt.date.fromordinal(birth_ord)
        female = rng.random() < 0.52
        if group is None:
            name = rng.choice(ITALIAN_FEMALE if female else ITALIAN_MALE)
            x = rng.random()
            if x < 0.60:
                place = "D969"
            elif x < 0.985:
                place = rng.choice(BIRTH_OTHER)
            else:
                place = rng.choice(BIRTH_ABROAD_ITALIANS)
            citt = "100"
        else:
            males, females = FOREIGN_NAMES[group]
            name = rng.choice(females if female else males)
            place, citt = rng.choice(FOREIGN_GROUPS[group])
            if birth.year >= 1995 and rng.random() < 0.3:   # second generation, born in Genova
                place = "D969"
                if rng.random() < 0.4:
                    citt = "100"
            elif rng.random() < 0.1:
                citt = "100"                                 # naturalised
        cf = build_cf(surname, name, birth, female, place)
        if rng.random() < 0.01:
            cf = omocodia(cf, 1)                             # omocodia already in the record
        resident = rng.random() >= 0.08
        if resident:
            comune = "D969"
            addr = f"{rng.choice(GENOVA_STREETS)} {rng.randrange(1, 180)}"
            if rng.random() < 0.3:
                addr += f"/{rng.randrange(1, 30)}"
        else:
            comune = rng.choice(NON_RESIDENT_COMUNI)
            addr = f"{rng.choice(OTHER_STREETS)} {rng.randrange(1, 90)}"
        death = None
        if rng.random() < 0.05:
            lo = max(birth_ord, dt.date(2013, 1, 1).toordinal())
            death = rand_day(rng, lo, REF_DATE.toordinal())
        return {"surname": surname, "name": name, "female": female, "birth": birth,
                "birth_ord": birth_ord, "place": place, "citt": citt, "cf": cf,
                "resident": resident, "comune": comune, "addr": addr, "death": death}

    def membership(self, rng, forced):
        x = rng.random()
        if x < 0.60:
            systems = [weighted(rng, SINGLE_WEIGHTS)]
        elif x < 0.90:
            systems = list(weighted(rng, PAIR_WEIGHTS))
        else:
            systems = list(SYSTEMS)
        if forced and forced not in systems:
            systems[int(rng.random() * len(systems))] = forced
        return sorted(systems, key=SYSTEMS.index)

    # anagrafica -----------------------------------------------------------------------------
    def anagrafica(self, system, ident, rng, *, cf="keep", name=None, noisy=False,
                   birth_override=None) -> int:
        aid = self.new_id(system, "anagrafica")
        style = SYSTEM_STYLE[system]
        vr = rng if noisy else None
        if noisy:   # the whole record was typed differently (caps lock, other operator...)
            w = rng.random()
            if w < 0.2:
                style = "lower"
            elif w < 0.5:
                style = "title" if style == "upper" else "upper"
        cognome = render_name(ident["surname"], style, vr)
        nome = render_name(name or ident["name"], style, vr)
        codice = ident["cf"] if cf == "keep" else cf
        birth = birth_override or ident["birth"].isoformat()
        death = iso(ident["death"]) if ident["death"] is not None else None
        lo = max(ident["birth_ord"], SYSTEM_START[system].toordinal())
        modified = f"{iso(rand_day(rng, lo, REF_DATE.toordinal()))} {rand_time(rng)}"
        self.sink.add(system, "anagrafica", (
            aid, cognome, nome, codice, "F" if ident["female"] else "M", birth, ident["place"],
            ident["citt"], ident["comune"], ident["addr"], 1 if ident["resident"] else 0, death,
            modified))
        self.last_anag[system] = aid
        return aid

    # per person -----------------------------------------------------------------------------
    def person(self, i: int) -> None:
        rng = random.Random(f"{self.seed}:{i}")
        kind = self.kind_of(i)
        ident = self.identity(i, rng)
        rows = []   # (system, id_anagrafica, identity) for activity generation
        if kind in NEAR_MISS_KINDS:
            a, b = rng.sample(SYSTEMS, 2)
            if kind == "different_cf_same_data" and rng.random() < 0.25:
                b = a       # homonyms in the same system
            id_a = self.anagrafica(a, ident, rng)
            rows.append((a, id_a, ident))
            if kind == "cf_typo":
                cf = ident["cf"]
                pos = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 14))
                pool = "0123456789" if cf[pos].isdigit() else "ABCDEFGHIJKLMNOPRSTUVZ"
                new = rng.choice([c for c in pool if c != cf[pos]])
                typo = cf[:pos] + new + cf[pos + 1:]
                assert not cf_is_valid(typo)
                id_b = self.anagrafica(b, ident, rng, cf=typo, noisy=True)
                rows.append((b, id_b, ident))
            elif kind == "name_typo":
                typo = name_typo(ident["name"], rng, ALL_FIRST_NAMES)
                id_b = self.anagrafica(b, ident, rng, cf=None, name=typo)
                rows.append((b, id_b, ident))
            else:
                other = dict(ident)
                level = 1 + int(rng.random() * 2)
                other["cf"] = omocodia(ident["cf"], level) if ident["cf"][14].isdigit() \
                    else omocodia(ident["cf"], 3)
                if other["cf"] == ident["cf"]:
                    other["cf"] = omocodia(ident["cf"], 7)
                other["female"] = ident["female"]
                other["resident"] = rng.random() >= 0.08
                other["addr"] = f"{rng.choice(GENOVA_STREETS)} {rng.randrange(1, 180)}"
                other["comune"] = "D969" if other["resident"] else rng.choice(NON_RESIDENT_COMUNI)
                other["death"] = None
                id_b = self.anagrafica(b, other, rng)
                rows.append((b, id_b, other))
            self.near.add({"kind": kind, "members": [
                {"system": a, "id_anagrafica": id_a}, {"system": b, "id_anagrafica": id_b}]})
            self.near_counts[kind] += 1
        elif kind in ("impossible_birth_date", "invalid_cf"):
            system = weighted(rng, SINGLE_WEIGHTS)
            if kind == "impossible_birth_date":
                bad = shift_years(ident["birth"], 104 if rng.random() < 0.5 else -128)
                aid = self.anagrafica(system, ident, rng, cf=None, birth_override=bad.isoformat())
            else:
                cf = ident["cf"]
                v = rng.random()
                if v < 0.3:
                    bad = cf[:15]                                      # truncated
                elif v < 0.6:
                    bad = cf[:15] + CHECK_LETTERS[(CHECK_LETTERS.index(cf[15]) + 7) % 26]
                elif v < 0.8:                                          # O for 0, I for 1...
                    pos = rng.choice((6, 7, 9, 10, 12, 13, 14))
                    first = cf[:pos] + "OIZEAHGJBK"[int(cf[pos])] + cf[pos + 1:15] \
                        if cf[pos].isdigit() else cf[:pos] + "O" + cf[pos + 1:15]
                    bad = first + check_char(first)
                else:
                    bad = cf + "X"                                     # 17 characters
                assert not cf_is_valid(bad)
                aid = self.anagrafica(system, ident, rng, cf=bad)
            self.add_dirty(system, "anagrafica", aid, kind)
            rows.append((system, aid, ident))
        else:
            forced = FORCED_SYSTEM.get(kind)
            systems = self.membership(rng, forced)
            if len(systems) == 1:
                cf = None if rng.random() < 0.04 else "keep"
                aid = self.anagrafica(systems[0], ident, rng, cf=cf)
                rows.append((systems[0], aid, ident))
            else:
                ckind = "same_cf" if rng.random() < 0.75 else "missing_cf"
                missing = int(rng.random() * len(systems)) if ckind == "missing_cf" else -1
                members = []
                for k, system in enumerate(systems):
                    aid = self.anagrafica(system, ident, rng, cf=None if k == missing else "keep",
                                          noisy=k > 0 or rng.random() < 0.3)
                    rows.append((system, aid, ident))
                    members.append({"system": system, "id_anagrafica": aid})
                self.cluster_counts[ckind] += 1
                self.cluster_members += len(members)
                if not self.omit_clusters:
                    self.clusters.add({"kind": ckind, "members": members})
        # activity in each system
        done_events = False
        for system, aid, who in rows:
            event = kind if (not done_events and FORCED_SYSTEM.get(kind) == system) else None
            if event:
                done_events = True
            if system == "segretariato":
                self.seg_activity(aid, who, rng, event)
            elif system == "web_distretti":
                self.wd_activity(aid, who, rng, event)
            else:
                self.st_activity(aid, who, rng, event)

    # segretariato ---------------------------------------------------------------------------
    def segnalazione(self, aid, who, rng, lo, hi):
        sid = self.new_id("segretariato", "segnalazione")
        day = rand_day(rng, lo, hi)
        tipo = weighted(rng, TIPI_SEGNALANTE)
        segnalante, id_seg = None, None
        if tipo == "FAM":
            surname = title_name(SURNAMES[int(rng.random() * len(SURNAMES))][0])
            segnalante = f"{rng.choice(FAM_REL)} {surname}"
            if rng.random() < 0.4 and self.last_anag["segretariato"] not in (None, aid):
                id_seg = self.last_anag["segretariato"]
        elif tipo != "CIT":
            segnalante = rng.choice(SEGNALANTI[tipo])
        esito = weighted(rng, (("PIC", 40), ("INF", 30), ("INV", 15), ("ARC", 15)))
        note = rng.choice(NOTES) if rng.random() < 0.45 else None
        self.sink.add("segretariato", "segnalazione", (
            sid, aid, iso(day), tipo, segnalante, id_seg, 1 + int(rng.random() * 9), esito, note))
        for cod in sorted(rng.sample([c for c, _ in RICHIESTE], 1 + int(rng.random() * 2))):
            self.sink.add("segretariato", "segnalazione_richiesta", (sid, cod))
        for cod in sorted(rng.sample([c for c, _ in PROBLEMI], 1 + int(rng.random() * 3))):
            self.sink.add("segretariato", "segnalazione_problema", (sid, cod))
        return sid

    def window(self, system, who):
        lo = max(who["birth_ord"], SYSTEM_START[system].toordinal())
        hi = who["death"] if who["death"] is not None else REF_DATE.toordinal()
        return lo, max(lo, hi)

    def seg_activity(self, aid, who, rng, event):
        lo, hi = self.window("segretariato", who)
        n = weighted(rng, ((1, 55), (2, 35), (3, 10)))
        for _ in range(n):
            self.segnalazione(aid, who, rng, lo, hi)
        if event == "orphan_person:segnalazione":
            ghost = self.gap_id("segretariato", "anagrafica")
            sid = self.segnalazione(ghost, who, rng, lo, hi)
            self.add_dirty("segretariato", "segnalazione", sid, "orphan_person")

    # web distretti -------------------------------------------------------------------------
    def wd_activity(self, aid, who, rng, event):
        add = self.sink.add
        lo, hi = self.window("web_distretti", who)
        age = (REF_DATE - who["birth"]).days // 365
        # family unit (sequential: consecutive Web Distretti persons share a nucleo)
        x = rng.random()
        if self.nucleo is not None and x < 0.30 and self.nucleo[1] < 5:
            nid, size = self.nucleo
            rel = weighted(rng, (("CG", 30), ("FG", 45), ("GE", 10), ("AL", 15)))
            add("web_distretti", "nucleo_componente", (nid, aid, rel))
            self.nucleo = (nid, size + 1)
        elif x < 0.75:
            nid = self.new_id("web_distretti", "nucleo")
            tipo = "FAM" if rng.random() < 0.85 else "CNV"
            add("web_distretti", "nucleo", (nid, tipo, iso(rand_day(rng, lo, hi))))
            add("web_distretti", "nucleo_componente", (nid, aid, "IS"))
            self.nucleo = (nid, 1)
        # prese in carico
        n_pic = weighted(rng, ((1, 40), (2, 30), (3, 20), (4, 10)))
        openings = sorted(rand_day(rng, lo, hi) for _ in range(n_pic))
        pics = []
        for k, opening in enumerate(openings):
            pid = self.new_id("web_distretti", "presa_in_carico")
            last = k == n_pic - 1
            if who["death"] is not None and last:
                closing, motivo = who["death"], "DEC"
            elif who["death"] is not None or rng.random() < 0.5:
                closing = rand_day(rng, opening, hi)
                motivo = weighted(rng, (("TRA", 25), ("OBR", 40), ("RIN", 20), ("ALT", 15)))
            else:
                closing, motivo = None, None
            if event == "closure_before_opening" and k == 0:
                closing = opening - 1 - int(rng.random() * 400)
                motivo = motivo if motivo not in (None, "DEC") else "OBR"
                self.add_dirty("web_distretti", "presa_in_carico", pid, "closure_before_opening")
            servizio = SERVIZI[int(rng.random() * 9)] if rng.random() < 0.85 \
                else rng.choice(("UCST", "UCIL"))
            if rng.random() < 0.2:   # transferred once: storico row, final service on the PIC
                end = closing if closing is not None and closing >= opening else hi
                other = rng.choice([s for s in SERVIZI if s != servizio])
                add("web_distretti", "presa_in_carico_storico", (
                    self.new_id("web_distretti", "presa_in_carico_storico"), pid, other, servizio,
                    iso(rand_day(rng, opening, end))))
            tipo_pic = weighted(rng, (("A", 60), ("M", 25), ("I", 15)))
            add("web_distretti", "presa_in_carico", (
                pid, aid, servizio, tipo_pic, iso(opening),
                iso(closing) if closing is not None else None, motivo))
            end = closing if closing is not None and closing >= opening else hi
            # tipizzazioni
            primary = "MIN" if age < 18 else ("ANZ" if age >= 65 else
                                              rng.choice(("ADU", "DIS", "FAM")))
            tips = {primary}
            if rng.random() < 0.4:
                tips.add(rng.choice(TIPIZZAZIONI))
            if who["citt"] != "100" and rng.random() < 0.5:
                tips.add("IMM")
            for cod in sorted(tips):
                add("web_distretti", "pic_tipizzazione", (pid, cod))
            # operators: a referente (maybe replaced once) and maybe a collaboratore
            ops = rng.sample(range(self.n_operatori), min(3, self.n_operatori))
            if rng.random() < 0.25 and end > opening:
                change = rand_day(rng, opening + 1, end)
                add("web_distretti", "pic_operatore",
                    (pid, self.operatore_id(ops[0]), "REF", iso(opening), iso(change - 1)))
                add("web_distretti", "pic_operatore",
                    (pid, self.operatore_id(ops[1]), "REF", iso(change),
                     iso(closing) if closing is not None and closing >= opening else None))
            else:
                add("web_distretti", "pic_operatore",
                    (pid, self.operatore_id(ops[0]), "REF", iso(opening),
                     iso(closing) if closing is not None and closing >= opening else None))
            if rng.random() < 0.3:
                add("web_distretti", "pic_operatore",
                    (pid, self.operatore_id(ops[2]), "COL", iso(rand_day(rng, opening, end)), None))
            if event == "orphan_operatore" and k == 0:
                oid = self.orphan_operatore_id(rng)
                add("web_distretti", "pic_operatore", (pid, oid, "COL", iso(opening), None))
                self.add_dirty("web_distretti", "pic_operatore", f"{pid}|{oid}|{iso(opening)}",
                               "orphan_operatore")
            pics.append((pid, opening, end, primary))
        # interventions
        for k, (pid, opening, end, area) in enumerate(pics):
            n_int = weighted(rng, ((0, 10), (1, 15), (2, 25), (3, 25), (4, 15), (5, 10)))
            if k == 0 and event in ("negative_amount", "duplicate_intervento") and n_int == 0:
                n_int = 1
            seen = set()
            last_row = None
            for m in range(n_int):
                row = self.intervento_row(pid, aid, opening, end, area, rng, seen)
                if k == 0 and m == 0 and event == "negative_amount":
                    row = row[:7] + (-row[7],) + row[8:]
                    self.add_dirty("web_distretti", "intervento", row[0], "negative_amount")
                add("web_distretti", "intervento", row)
                last_row = row
            if k == 0 and event == "duplicate_intervento":
                dup = (self.new_id("web_distretti", "intervento"),) + last_row[1:]
                add("web_distretti", "intervento", dup)
                self.add_dirty("web_distretti", "intervento", dup[0], "duplicate_intervento",
                               duplicate_of=str(last_row[0]))
        if event == "orphan_pic":
            pid, opening, end, area = pics[0]
            ghost = self.gap_id("web_distretti", "presa_in_carico")
            row = self.intervento_row(ghost, aid, opening, end, area, rng, set())
            add("web_distretti", "intervento", row)
            self.add_dirty("web_distretti", "intervento", row[0], "orphan_pic")
        if event == "orphan_person:intervento":
            pid, opening, end, area = pics[0]
            ghost = self.gap_id("web_distretti", "anagrafica")
            row = self.intervento_row(pid, ghost, opening, end, area, rng, set())
            add("web_distretti", "intervento", row)
            self.add_dirty("web_distretti", "intervento", row[0], "orphan_person")
        if event == "orphan_person:presa_in_carico":
            ghost = self.gap_id("web_distretti", "anagrafica")
            pid = self.new_id("web_distretti", "presa_in_carico")
            add("web_distretti", "presa_in_carico", (
                pid, ghost, SERVIZI[int(rng.random() * 9)], "A", iso(rand_day(rng, lo, hi)),
                None, None))
            self.add_dirty("web_distretti", "presa_in_carico", pid, "orphan_person")
        # ISEE
        years = sorted(rng.sample(range(2016, 2026), weighted(rng, ((0, 30), (1, 35), (2, 25),
                                                                     (3, 10)))))
        for year in years:
            self.isee_row(aid, year, rng)
        if event == "orphan_person:isee":
            iid = self.isee_row(self.gap_id("web_distretti", "anagrafica"), 2024, rng)
            self.add_dirty("web_distretti", "isee", iid, "orphan_person")

    def isee_row(self, aid, year, rng) -> int:
        iid = self.new_id("web_distretti", "isee")
        valore = int(rng.random() * 3_500_000) if rng.random() < 0.9 else 0
        self.sink.add("web_distretti", "isee", (iid, aid, year, valore, f"{year}-12-31"))
        return iid

    def intervento_row(self, pid, aid, opening, end, area, rng, seen) -> tuple:
        codes = INTERVENTI_BY_AREA[area]
        for _ in range(10):
            cod = codes[int(rng.random() * len(codes))]
            spec = TAB_INTERVENTO_BY_CODE[cod]
            c_lo = max(opening, dt.date.fromisoformat(spec[6]).toordinal())
            c_hi = min(end, dt.date.fromisoformat(spec[7]).toordinal()) if spec[7] else end
            if c_lo <= c_hi:
                break
        else:
            cod, spec, c_lo, c_hi = "CES01", TAB_INTERVENTO_BY_CODE["CES01"], opening, end
        start = rand_day(rng, c_lo, max(c_lo, c_hi))
        while (cod, start) in seen:
            start += 1
        seen.add((cod, start))
        periodo, unita, unit = spec[3], spec[4], spec[8]
        if periodo == "P":
            fine = start
        elif rng.random() < 0.3:
            fine = None
        else:
            fine = start + 28 + int(rng.random() * 330)
        if unita == "EUR":
            qty = 100
            amount = unit * (1 + int(rng.random() * 3)) // 2 + int(rng.random() * 40) * 500
        elif unita == "ORA":
            qty = 100 * (4 + int(rng.random() * 60)) + (50 if rng.random() < 0.2 else 0)
            amount = unit * qty // 100
        elif unita == "GIO":
            qty = 100 * (1 + int(rng.random() * 31))
            amount = unit * qty // 100
        else:
            qty = 100 * (1 + int(rng.random() * 20))
            amount = unit * qty // 100
        fornitore = 1 + int(rng.random() * len(FORNITORI)) if cod in NEEDS_FORNITORE else None
        iid = self.new_id("web_distretti", "intervento")
        return (iid, pid, aid, cod, iso(start), iso(fine) if fine is not None else None, qty,
                amount, fornitore)

    # scheda tecnica ------------------------------------------------------------------------
    def st_activity(self, aid, who, rng, event):
        lo, hi = self.window("scheda_tecnica", who)
        n = weighted(rng, ((0, 30), (1, 52), (2, 18)))
        if event in ("orphan_voce",) and n == 0:
            n = 1
        for k in range(n):
            self.scheda(aid, rng, lo, hi, orphan_voce=(event == "orphan_voce" and k == 0))
        if event == "orphan_person:st_scheda":
            sid = self.scheda(self.gap_id("scheda_tecnica", "anagrafica"), rng, lo, hi)
            self.add_dirty("scheda_tecnica", "st_scheda", sid, "orphan_person")

    def scheda(self, aid, rng, lo, hi, orphan_voce=False) -> int:
        add = self.sink.add
        sid = self.new_id("scheda_tecnica", "st_scheda")
        day = rand_day(rng, lo, hi)
        j = int(rng.random() * self.n_operatori)
        surname, name, _ = self.operatore_name(j)
        fmt = rng.random()
        if fmt < 0.4:
            operatore = f"{title_name(surname)} {title_name(name)}"
        elif fmt < 0.7:
            operatore = f"A.S. {title_name(surname)} {title_name(name)[0]}."
        else:
            operatore = f"{surname} {name}"
        # values: PIA items (most), some other items; some answers changed later
        values = []  # (id_voce, value, changed_to or None)
        current, stale = {}, {}
        for vid, weight in PIA_WEIGHTS.items():
            if rng.random() < 0.85 or not current and vid == 26:
                score = 1 + int(rng.random() * 5)
                new = None
                if rng.random() < 0.08:
                    new = 1 + int(rng.random() * 5)
                    if new == score:
                        new = score % 5 + 1
                values.append((vid, str(score), None if new is None else str(new)))
                stale[vid] = score
                current[vid] = score if new is None else new
        for voce in OTHER_VOCI:
            if rng.random() < 0.2:
                vid, code, tipo = voce[0], voce[2], voce[4]
                if tipo == "SN":
                    v = "S" if rng.random() < 0.4 else "N"
                elif tipo == "NUM":
                    v = str(int(rng.random() * (8 if code in ("CTX02", "ABI03", "SAN02") else 40)))
                else:
                    v = rng.choice(TXT_VALUES[code])
                values.append((vid, v, None))
        if orphan_voce:
            values.append((DELETED_VOCE, str(1 + int(rng.random() * 5)), None))
        expected = pia_total(current)
        stale_total = pia_total(stale)
        x = rng.random()
        reason = None
        if x < 0.02:
            legacy = None
        elif x < 0.05:
            if stale_total != expected:
                legacy, reason = stale_total, "stale_values"
            else:
                legacy = expected - 1 if expected > 100 else expected + 1
                reason = "float_rounding"
        else:
            legacy = expected
        add("scheda_tecnica", "st_scheda", (sid, aid, iso(day), operatore, legacy))
        self.pia_schede += 1
        if legacy is None:
            self.pia_null += 1
        elif legacy != expected:
            self.pia_mismatch.add({"id_scheda": sid, "legacy": cents_str(legacy),
                                   "expected": cents_str(expected), "reason": reason})
        t0 = f"{iso(day)} {rand_time(rng)}"
        changes = []
        for vid, v, new in values:
            vrow = self.new_id("scheda_tecnica", "st_valore")
            if new is None:
                add("scheda_tecnica", "st_valore", (vrow, sid, vid, v, t0, None))
            else:
                t1 = f"{iso(min(day + 1 + int(rng.random() * 120), REF_DATE.toordinal()))} " \
                     f"{rand_time(rng)}"
                if t1 <= t0:
                    t1 = t0[:11] + "23:59:59"
                add("scheda_tecnica", "st_valore", (vrow, sid, vid, v, t0, t1))
                changes.append((vid, new, t1))
            if vid == DELETED_VOCE:
                self.add_dirty("scheda_tecnica", "st_valore", vrow, "orphan_voce")
        for vid, new, t1 in changes:
            add("scheda_tecnica", "st_valore",
                (self.new_id("scheda_tecnica", "st_valore"), sid, vid, new, t1, None))
        return sid

    # run -----------------------------------------------------------------------------------
    def run(self) -> None:
        self.static_tables()
        for i in range(self.n):
            self.person(i)
        self.sink.close()

    def write_expect(self, path: Path) -> None:
        tables = {f"{s}.{t}": self.sink.counts[(s, t)] for s in SYSTEMS for t in SCHEMA[s]}
        anag_rows = sum(self.sink.counts[(s, "anagrafica")] for s in SYSTEMS)
        n_clusters = sum(self.cluster_counts.values())
        distinct = anag_rows - (self.cluster_members - n_clusters)
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            out.write("{\n")
            out.write(f'  "seed": {json.dumps(self.seed)},\n  "persons": {self.n},\n')
            out.write(f'  "reference_date": "{REF_DATE.isoformat()}",\n')
            out.write('  "tables": ' + json.dumps(tables, indent=4).replace("\n}", "\n  }")
                      + ",\n")
            out.write('  "dirty_counts": ' + json.dumps(self.dirty_counts) + ",\n")
            out.write('  "dirty": [')
            self.dirty.dump(out, "    ")
            out.write("],\n")
            out.write('  "cluster_counts": ' + json.dumps(self.cluster_counts) + ",\n")
            out.write(f'  "cluster_members": {self.cluster_members},\n')
            out.write(f'  "clusters_omitted": {json.dumps(self.omit_clusters)},\n')
            out.write('  "clusters": [')
            self.clusters.dump(out, "    ")
            out.write("],\n")
            out.write('  "near_miss_counts": ' + json.dumps(self.near_counts) + ",\n")
            out.write('  "near_misses": [')
            self.near.dump(out, "    ")
            out.write("],\n")
            out.write(f'  "pia": {{\n    "schede": {self.pia_schede},\n'
                      f'    "legacy_null": {self.pia_null},\n'
                      f'    "legacy_mismatch_count": {self.pia_mismatch.n},\n'
                      '    "legacy_mismatch": [')
            self.pia_mismatch.dump(out, "      ")
            out.write("]\n  },\n")
            out.write(f'  "anagrafica_rows": {anag_rows},\n')
            out.write(f'  "distinct_persons_expected": {distinct}\n')
            out.write("}\n")


def pia_total(scores: dict) -> int | None:
    """round_half_up(sum(score*peso)/sum(peso), 2), in hundredths, exact integer arithmetic."""
    num = sum(score * PIA_WEIGHTS[v] for v, score in scores.items())
    den = sum(PIA_WEIGHTS[v] for v in scores)
    if den == 0:
        return None
    return (num * 200 + den) // (2 * den)


def generate(out: Path, persons: int, seed, fmt: str) -> Generator:
    out.mkdir(parents=True, exist_ok=True)
    sink = SINKS[fmt](out)
    gen = Generator(persons, seed, sink)
    gen.run()
    gen.write_expect(out / "expect.json")
    return gen


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------

def norm_key(row):
    cognome, nome, nascita, luogo = row
    return (letters_only(cognome), letters_only(nome), nascita, luogo)


def norm_cf(cf):
    return cf.strip().upper() if cf is not None else None


def check_outputs(out: Path) -> list[str]:
    """Consistency of a sqlite output directory with its expect.json; returns errors.

    Usable on any sqlite output (``python3 -c 'import gen_legacy_db as g;
    print(g.check_outputs(Path(DIR)))'``); with the clusters list omitted (N >= 100 000) the
    cluster-membership checks are skipped."""
    errors = []
    expect = json.loads((out / "expect.json").read_text(encoding="utf-8"))
    dbs = {s: sqlite3.connect(out / f"{s}.sqlite") for s in SYSTEMS}

    def q(system, sql, args=()):
        return dbs[system].execute(sql, args).fetchall()

    # row counts
    for s in SYSTEMS:
        for t in SCHEMA[s]:
            n = q(s, f"SELECT count(*) FROM {t}")[0][0]
            if expect["tables"].get(f"{s}.{t}") != n:
                errors.append(f"row count {s}.{t}: db {n}, expect {expect['tables'].get(f'{s}.{t}')}")
    # dirty rows: what the databases contain vs what is listed
    found = set()
    anag_fk = (("segretariato", "segnalazione", "id_segnalazione"),
               ("web_distretti", "presa_in_carico", "id_pic"),
               ("web_distretti", "intervento", "id_intervento"),
               ("web_distretti", "isee", "id_isee"),
               ("scheda_tecnica", "st_scheda", "id_scheda"))
    for s, t, pk in anag_fk:
        for (k,) in q(s, f"SELECT {pk} FROM {t} WHERE id_anagrafica NOT IN "
                         "(SELECT id_anagrafica FROM anagrafica)"):
            found.add((s, t, str(k), "orphan_person"))
    for (k,) in q("web_distretti", "SELECT id_intervento FROM intervento WHERE id_pic NOT IN "
                                   "(SELECT id_pic FROM presa_in_carico)"):
        found.add(("web_distretti", "intervento", str(k), "orphan_pic"))
    for (k,) in q("scheda_tecnica", "SELECT id_valore FROM st_valore WHERE id_voce NOT IN "
                                    "(SELECT id_voce FROM st_voce)"):
        found.add(("scheda_tecnica", "st_valore", str(k), "orphan_voce"))
    for a, b, c in q("web_distretti", "SELECT id_pic, id_operatore, data_inizio FROM pic_operatore "
                                      "WHERE id_operatore NOT IN (SELECT id_operatore FROM operatore)"):
        found.add(("web_distretti", "pic_operatore", f"{a}|{b}|{c}", "orphan_operatore"))
    for s in SYSTEMS:
        for (k,) in q(s, "SELECT id_anagrafica FROM anagrafica WHERE data_nascita < ? OR "
                         "data_nascita > ?", (MIN_VALID_BIRTH.isoformat(), REF_DATE.isoformat())):
            found.add((s, "anagrafica", str(k), "impossible_birth_date"))
    for (k,) in q("web_distretti", "SELECT id_pic FROM presa_in_carico "
                                   "WHERE data_chiusura < data_apertura"):
        found.add(("web_distretti", "presa_in_carico", str(k), "closure_before_opening"))
    for (k,) in q("web_distretti", "SELECT id_intervento FROM intervento "
                                   "WHERE CAST(importo AS REAL) < 0"):
        found.add(("web_distretti", "intervento", str(k), "negative_amount"))
    for (k,) in q("web_distretti", "SELECT b.id_intervento FROM intervento a JOIN intervento b "
                                   "ON a.id_pic = b.id_pic AND a.id_anagrafica = b.id_anagrafica "
                                   "AND a.cod_intervento = b.cod_intervento AND a.data_inizio = "
                                   "b.data_inizio AND a.importo = b.importo "
                                   "AND a.id_intervento < b.id_intervento"):
        found.add(("web_distretti", "intervento", str(k), "duplicate_intervento"))
    typo_members = set()
    for nm in expect["near_misses"]:
        if nm["kind"] == "cf_typo":
            for m in nm["members"]:
                typo_members.add((m["system"], m["id_anagrafica"]))
    invalid_typo = set()
    for s in SYSTEMS:
        for k, cf in q(s, "SELECT id_anagrafica, codice_fiscale FROM anagrafica "
                          "WHERE codice_fiscale IS NOT NULL"):
            if not cf_is_valid(norm_cf(cf)):
                if (s, k) in typo_members:
                    invalid_typo.add((s, k))
                else:
                    found.add((s, "anagrafica", str(k), "invalid_cf"))
    listed = {(d["system"], d["table"], d["key"], d["kind"]) for d in expect["dirty"]}
    if len(listed) != len(expect["dirty"]):
        errors.append("duplicate entries in dirty list")
    for miss in sorted(listed - found)[:10]:
        errors.append(f"listed dirty row not found in the data: {miss}")
    for extra in sorted(found - listed)[:10]:
        errors.append(f"dirty row in the data but not listed: {extra}")
    counts = {k: 0 for k in DIRTY_KINDS}
    for d in expect["dirty"]:
        counts[d["kind"]] += 1
    if counts != expect["dirty_counts"]:
        errors.append("dirty_counts inconsistent with the dirty list")
    for kind, n in counts.items():
        if n < 2:
            errors.append(f"dirty kind {kind}: only {n} rows")
    # persons: clusters and near misses
    anag = {}
    for s in SYSTEMS:
        for k, cognome, nome, cf, nascita, luogo in q(
                s, "SELECT id_anagrafica, cognome, nome, codice_fiscale, data_nascita, "
                   "comune_nascita FROM anagrafica"):
            anag[(s, k)] = (norm_cf(cf), norm_key((cognome, nome, nascita, luogo)))
    group_of = {}
    for n, cl in enumerate(expect["clusters"]):
        members = [(m["system"], m["id_anagrafica"]) for m in cl["members"]]
        if any(m not in anag for m in members):
            errors.append(f"cluster {n}: member missing from anagrafica")
            continue
        if len({m[0] for m in members}) != len(members):
            errors.append(f"cluster {n}: two members in the same system")
        cfs = [anag[m][0] for m in members]
        keys = {anag[m][1] for m in members}
        if len(keys) != 1:
            errors.append(f"cluster {n}: normalised name/birth data differ: {keys}")
        valid = {c for c in cfs if c is not None}
        if len(valid) != 1 or not all(cf_is_valid(c) for c in valid):
            errors.append(f"cluster {n}: CFs not one valid code: {cfs}")
        if cl["kind"] == "same_cf" and None in cfs:
            errors.append(f"cluster {n}: same_cf with a NULL CF")
        if cl["kind"] == "missing_cf" and None not in cfs:
            errors.append(f"cluster {n}: missing_cf without NULL CF")
        for m in members:
            group_of[m] = ("c", n)
    for n, nm in enumerate(expect["near_misses"]):
        a, b = [(m["system"], m["id_anagrafica"]) for m in nm["members"]]
        if a not in anag or b not in anag:
            errors.append(f"near miss {n}: member missing")
            continue
        (cfa, ka), (cfb, kb) = anag[a], anag[b]
        if nm["kind"] == "cf_typo":
            ok = (ka == kb and cf_is_valid(cfa) and cfb is not None and not cf_is_valid(cfb)
                  and len(cfb) == 16 and sum(x != y for x, y in zip(cfa, cfb)) == 1)
        elif nm["kind"] == "name_typo":
            ok = (ka[0] == kb[0] and ka[2:] == kb[2:] and ka[1] != kb[1] and cfb is None
                  and cf_is_valid(cfa))
        else:
            ok = ka == kb and cf_is_valid(cfa) and cf_is_valid(cfb) and cfa != cfb
        if not ok:
            errors.append(f"near miss {n} ({nm['kind']}) not as described: {anag[a]} / {anag[b]}")
        for m in (a, b):
            group_of[m] = ("n", n)
    for kind, n in expect["near_miss_counts"].items():
        if n < 3:
            errors.append(f"near-miss kind {kind}: only {n}")
    # no accidental duplicates: rows sharing a valid CF or the normalised key must be in the
    # same cluster / near-miss group
    by_cf, by_key = {}, {}
    for m, (cf, key) in anag.items():
        if cf is not None and cf_is_valid(cf):
            by_cf.setdefault(cf, []).append(m)
        by_key.setdefault(key, []).append(m)
    for what, groups in (() if expect["clusters_omitted"] else
                         (("CF", by_cf), ("name/birth key", by_key))):
        for value, members in groups.items():
            if len(members) > 1 and len({group_of.get(m, m) for m in members}) > 1:
                errors.append(f"unexpected shared {what} {value}: {members}")
    n_clusters = sum(expect["cluster_counts"].values())
    cl_members = expect["cluster_members"]
    if not expect["clusters_omitted"] and (
            n_clusters != len(expect["clusters"])
            or cl_members != sum(len(c["members"]) for c in expect["clusters"])):
        errors.append("cluster_counts / cluster_members inconsistent with the clusters list")
    if expect["distinct_persons_expected"] != len(anag) - (cl_members - n_clusters):
        errors.append("distinct_persons_expected inconsistent")
    # PIA
    current = {}
    for sid, vid, val in q("scheda_tecnica", "SELECT v.id_scheda, v.id_voce, v.valore FROM "
                                             "st_valore v JOIN st_voce c ON c.id_voce = v.id_voce "
                                             "WHERE c.tipo_valore = 'PIA' AND "
                                             "v.data_fine_validita IS NULL"):
        cur = current.setdefault(sid, {})
        if vid in cur:
            errors.append(f"scheda {sid}: two current values for voce {vid}")
        cur[vid] = int(val)
    mismatch, nulls = {}, 0
    schede = q("scheda_tecnica", "SELECT id_scheda, pia_totale FROM st_scheda")
    for sid, legacy in schede:
        exp = pia_total(current.get(sid, {}))
        exp_s = cents_str(exp) if exp is not None else None
        if legacy is None:
            nulls += 1
        elif legacy != exp_s:
            mismatch[sid] = (legacy, exp_s)
    listed_pia = {m["id_scheda"]: (m["legacy"], m["expected"])
                  for m in expect["pia"]["legacy_mismatch"]}
    if listed_pia != mismatch:
        errors.append(f"PIA mismatches differ: listed {len(listed_pia)}, found {len(mismatch)}")
    if nulls != expect["pia"]["legacy_null"] or len(schede) != expect["pia"]["schede"]:
        errors.append("PIA counts inconsistent")
    for conn in dbs.values():
        conn.close()
    return errors


def check_tsql_docs() -> list[str]:
    """The T-SQL documentation files must declare exactly the generated columns."""
    errors = []
    base = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "legacy"
    for s in SYSTEMS:
        path = base / f"{s}.sql"
        if not path.exists():
            errors.append(f"{path} missing")
            continue
        text = path.read_text(encoding="utf-8")
        tables = dict(re.findall(r"CREATE TABLE dbo\.(\w+)\s*\((.*?)\n\);", text, re.S))
        if set(tables) != set(SCHEMA[s]):
            errors.append(f"{path.name}: tables {sorted(tables)} != {sorted(SCHEMA[s])}")
            continue
        for t, body in tables.items():
            cols = [m.group(1) for m in re.finditer(r"^\s+(\w+)\s+(?:int|bigint|varchar|nvarchar|"
                                                    r"char|nchar|date|datetime|bit|decimal|smallint|tinyint)",
                                                    body, re.M)]
            want = [c for c, _ in SCHEMA[s][t][0]]
            if cols != want:
                errors.append(f"{path.name} {t}: columns {cols} != {want}")
    return errors


def self_test() -> int:
    errors = []
    with tempfile.TemporaryDirectory(prefix="gen_legacy_db_") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        generate(a, SELF_TEST_PERSONS, SELF_TEST_SEED, "sqlite")
        generate(b, SELF_TEST_PERSONS, SELF_TEST_SEED, "sqlite")
        names = sorted(p.name for p in a.iterdir())
        if names != sorted(p.name for p in b.iterdir()):
            errors.append("the two runs wrote different file sets")
        for name in names:
            if not filecmp.cmp(a / name, b / name, shallow=False):
                errors.append(f"{name} differs between two runs with the same arguments")
        errors += check_outputs(a)
        # the other formats: determinism of expect.json across formats, CSV encodable
        c = Path(tmp) / "c"
        generate(c, 60, SELF_TEST_SEED, "csv")
        d = Path(tmp) / "d"
        generate(d, 60, SELF_TEST_SEED, "sqlite")
        if (c / "expect.json").read_bytes() != (d / "expect.json").read_bytes():
            errors.append("expect.json differs between csv and sqlite formats")
    errors += check_tsql_docs()
    if errors:
        for e in errors:
            print("FAIL:", e, file=sys.stderr)
        return 1
    print(f"self-test OK: {SELF_TEST_PERSONS} persons, seed {SELF_TEST_SEED}, deterministic, "
          "expect.json consistent with the databases")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--persons", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--format", choices=tuple(SINKS), default="sqlite")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if args.out is None:
        ap.error("--out is required")
    if args.persons < 1:
        ap.error("--persons must be positive")
    gen = generate(args.out, args.persons, args.seed, args.format)
    total = sum(gen.sink.counts.values())
    print(f"{args.format}: {args.persons} persons, {total} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
