-- Canonical social-services store, first cut (DESIGN.md §3).
--
-- Written once for both dialects. Tokens in braces are replaced by `snodo-store`:
--   {id}        surrogate key: BIGINT identity (PostgreSQL) / INTEGER PRIMARY KEY (SQLite)
--   {ref}       reference to a surrogate key: BIGINT / INTEGER
--   {int}       BIGINT / INTEGER
--   {decimal}   NUMERIC / TEXT  (SQLite would turn a NUMERIC column into floating point)
--   {date}      DATE / TEXT (ISO 8601)
--   {timestamp} TIMESTAMP / TEXT (ISO 8601)
--   {bool}      BOOLEAN / INTEGER
--
-- Conventions:
--   * every row belongs to an `ente` (tenant) by its code, multi-tenant from day one;
--   * every row carries `source_system`, `source_key` (the legacy key as text, composite
--     keys joined by `|`) and `loaded_by_run` (the flow-log run that wrote it last);
--     (ente, source_system, source_key) is the natural key migrations upsert on;
--   * a reference to another entity is kept twice: the legacy key (`*_source_key`, as
--     loaded) and the resolved surrogate id (`*_id`, filled by the migrator's resolve
--     phase). A NULL id next to a non-NULL source key is an orphan, reported, never
--     silently dropped.

-- Tenants: a city, its districts, a social-services ambito.
CREATE TABLE ente (
    id {id},
    codice TEXT NOT NULL UNIQUE,
    denominazione TEXT NOT NULL,
    tipo TEXT NOT NULL,
    ente_padre TEXT
);

-- Persons as each source system knows them: one row per legacy registry row. These rows
-- are the history of a person (valid_from = the source's last change); `persona` holds
-- the merged current view.
CREATE TABLE persona_fonte (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_id {ref},
    codice_fiscale TEXT,
    cf_valido {bool},
    cognome TEXT,
    nome TEXT,
    sesso TEXT,
    data_nascita {date},
    comune_nascita TEXT,
    cittadinanza TEXT,
    comune_residenza TEXT,
    indirizzo TEXT,
    residente {bool},
    data_decesso {date},
    valid_from {timestamp},
    cognome_norm TEXT,
    nome_norm TEXT,
    chiave_anagrafica TEXT,
    chiave_persona TEXT,
    UNIQUE (ente, source_system, source_key)
);
CREATE INDEX persona_fonte_cf ON persona_fonte (ente, codice_fiscale);
CREATE INDEX persona_fonte_anagrafica ON persona_fonte (ente, chiave_anagrafica);
CREATE INDEX persona_fonte_chiave ON persona_fonte (ente, chiave_persona);
CREATE INDEX persona_fonte_nascita ON persona_fonte (ente, cognome_norm, data_nascita, comune_nascita);

-- The de-duplicated person. `chiave` says how it was identified: `CF:<codice fiscale>`,
-- `AN:<normalised surname|name|birth date|birthplace>`, or `SRC:<system>:<key>` for a
-- source row that could not be matched safely.
CREATE TABLE persona (
    id {id},
    ente TEXT NOT NULL,
    chiave TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    codice_fiscale TEXT,
    cognome TEXT,
    nome TEXT,
    sesso TEXT,
    data_nascita {date},
    comune_nascita TEXT,
    cittadinanza TEXT,
    comune_residenza TEXT,
    residente {bool},
    data_decesso {date},
    valid_from {timestamp},
    fonti {int},
    UNIQUE (ente, chiave)
);

-- Possible duplicates the migrator did not merge: a person must decide.
CREATE TABLE persona_revisione (
    id {id},
    ente TEXT NOT NULL,
    tipo TEXT NOT NULL,
    fonte_a TEXT NOT NULL,
    fonte_b TEXT NOT NULL,
    evidenza TEXT NOT NULL,
    stato TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    UNIQUE (ente, tipo, fonte_a, fonte_b)
);

-- Households: registry (A), fiscal (F) or relational (R).
CREATE TABLE nucleo (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    tipo TEXT,
    data_costituzione {date},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE nucleo_membro (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    nucleo_source_key TEXT,
    nucleo_id {ref},
    persona_source_key TEXT,
    persona_id {ref},
    relazione TEXT,
    UNIQUE (ente, source_system, source_key)
);

-- Intake (Segretariato Sociale): who reported whom, what was asked, what came of it.
CREATE TABLE segnalazione (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    data_segnalazione {timestamp},
    tipo_segnalante TEXT,
    segnalante TEXT,
    segnalante_source_key TEXT,
    segnalante_persona_id {ref},
    distretto {int},
    esito TEXT,
    note TEXT,
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE segnalazione_richiesta (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    segnalazione_source_key TEXT,
    segnalazione_id {ref},
    codice TEXT NOT NULL,
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE segnalazione_problema (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    segnalazione_source_key TEXT,
    segnalazione_id {ref},
    codice TEXT NOT NULL,
    UNIQUE (ente, source_system, source_key)
);

-- Code tables of the source systems (richieste, problemi, …), kept by domain.
CREATE TABLE codice (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    dominio TEXT NOT NULL,
    codice TEXT NOT NULL,
    descrizione TEXT,
    UNIQUE (ente, source_system, source_key)
);

-- Case management (Web Distretti).
CREATE TABLE operatore (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    cognome TEXT,
    nome TEXT,
    qualifica TEXT,
    attivo {bool},
    UNIQUE (ente, source_system, source_key)
);

-- `tipo`: istituzionale (I), monitoraggio (M), attiva (A).
CREATE TABLE presa_in_carico (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    servizio_territoriale TEXT NOT NULL,
    tipo TEXT NOT NULL,
    data_apertura {date} NOT NULL,
    data_chiusura {date},
    motivo_chiusura TEXT,
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE presa_in_carico_operatore (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    operatore_source_key TEXT,
    operatore_id {ref},
    ruolo TEXT,
    data_inizio {date},
    data_fine {date},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE presa_in_carico_tipizzazione (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    codice TEXT NOT NULL,
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE presa_in_carico_trasferimento (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    servizio_da TEXT,
    servizio_a TEXT,
    data_trasferimento {date},
    UNIQUE (ente, source_system, source_key)
);

-- Assessment forms (Scheda Tecnica): definitions section → module → item, historicised
-- answers, and the PIA fragility scores recomputed from item scores and weights.
CREATE TABLE valutazione_sezione (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    descrizione TEXT,
    ordine {int},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE valutazione_modulo (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    sezione_source_key TEXT,
    sezione_id {ref},
    descrizione TEXT,
    ordine {int},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE valutazione_voce (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    modulo_source_key TEXT,
    modulo_id {ref},
    descrizione TEXT,
    tipo_valore TEXT,
    dimensione_pia TEXT,
    peso_pia {decimal},
    valid_from {date},
    valid_to {date},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE valutazione (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    data_valutazione {timestamp},
    operatore TEXT,
    pia_totale {decimal},
    pia_totale_legacy {decimal},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE valutazione_risposta (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    valutazione_source_key TEXT,
    valutazione_id {ref},
    voce_source_key TEXT,
    voce_id {ref},
    valore TEXT,
    valid_from {timestamp},
    valid_to {timestamp},
    UNIQUE (ente, source_system, source_key)
);
CREATE INDEX valutazione_risposta_val ON valutazione_risposta (ente, source_system, valutazione_source_key);
CREATE INDEX valutazione_risposta_valutazione ON valutazione_risposta (valutazione_id);

-- One row per assessment and PIA dimension (weighted mean of the item scores).
CREATE TABLE valutazione_pia (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    valutazione_id {ref},
    dimensione TEXT NOT NULL,
    punteggio {decimal},
    UNIQUE (ente, source_system, source_key)
);

-- Individual plans (PAI / PEI): goals and actors. No legacy system holds them yet.
CREATE TABLE progetto (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_id {ref},
    presa_in_carico_id {ref},
    tipo TEXT,
    obiettivi TEXT,
    data_inizio {date},
    data_fine {date},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE fornitore (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    ragione_sociale TEXT,
    partita_iva TEXT,
    iban TEXT,
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE struttura (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    fornitore_id {ref},
    denominazione TEXT,
    tipo TEXT,
    comune TEXT,
    UNIQUE (ente, source_system, source_key)
);

-- The service catalogue, including admin-defined "interventi diversi": macro-area,
-- period type (P period, M month, G day) and the economic unit per period.
-- `codice_prestazione` is the national (INPS SIUSS) code, mapped later.
CREATE TABLE intervento_catalogo (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    codice TEXT NOT NULL,
    descrizione TEXT,
    macro_area TEXT,
    tipo_periodo TEXT,
    unita_economica TEXT,
    attivo {bool},
    valid_from {date},
    valid_to {date},
    codice_prestazione TEXT,
    UNIQUE (ente, source_system, source_key)
);

-- `duplicato_di`: the id of an identical earlier row (same person, service, period and
-- amount) in the same source; the row is kept so every source row stays traceable.
CREATE TABLE intervento (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    catalogo_source_key TEXT,
    catalogo_id {ref},
    fornitore_source_key TEXT,
    fornitore_id {ref},
    struttura_id {ref},
    data_inizio {date},
    data_fine {date},
    quantita {decimal},
    importo {decimal},
    duplicato_di {ref},
    UNIQUE (ente, source_system, source_key)
);

CREATE TABLE isee (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    anno {int},
    valore {decimal},
    data_scadenza {date},
    UNIQUE (ente, source_system, source_key)
);
