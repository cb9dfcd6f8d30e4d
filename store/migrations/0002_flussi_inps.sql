-- What the outbound flows to INPS (SIUSS: PS/PSA with SINA, SINBA) and ISTAT need beyond
-- the first cut, and the ledgers that make a flow never go out twice.
--
-- Same conventions as 0001: canonical rows carry (ente, source_system, source_key,
-- loaded_by_run). The `siuss_*` tables are the flows' own bookkeeping, written only by
-- snodo's siuss sink and by the WaaS e-service, never loaded from a legacy system.

-- Persons: the second citizenship (ISTAT state code, like `cittadinanza`).
ALTER TABLE persona ADD COLUMN seconda_cittadinanza TEXT;

-- Prestazioni (interventions) as SIUSS describes them.
--   protocollo_domanda   the application's protocol number (ProtocolloDomanda, 1..32 chars)
--   data_evento          the event that gave rise to the prestazione
--   data_erogazione      the payment date of a one-off prestazione
--   importo_mensile, periodo_erogazione (months), ore_mensili (hours of service a month)
--   quota_*              who pays: the ente, the user (co-payment), the health service (SSN),
--                        and the amount the user asked for
--   annullato            the prestazione was withdrawn: a prestazione already sent to INPS
--                        is never deleted but marked, so that the cancellation can be sent
ALTER TABLE intervento ADD COLUMN protocollo_domanda TEXT;
ALTER TABLE intervento ADD COLUMN data_evento {date};
ALTER TABLE intervento ADD COLUMN data_erogazione {date};
ALTER TABLE intervento ADD COLUMN importo_mensile {decimal};
ALTER TABLE intervento ADD COLUMN periodo_erogazione {int};
ALTER TABLE intervento ADD COLUMN ore_mensili {decimal};
ALTER TABLE intervento ADD COLUMN quota_ente {decimal};
ALTER TABLE intervento ADD COLUMN quota_utente {decimal};
ALTER TABLE intervento ADD COLUMN quota_ssn {decimal};
ALTER TABLE intervento ADD COLUMN quota_richiesta {decimal};
ALTER TABLE intervento ADD COLUMN annullato {bool};
CREATE INDEX intervento_persona ON intervento (persona_id, id);

-- ISEE: the DSU (the declaration behind the value) and the household size.
ALTER TABLE isee ADD COLUMN protocollo_dsu TEXT;
ALTER TABLE isee ADD COLUMN data_dsu {date};
ALTER TABLE isee ADD COLUMN componenti {int};
CREATE INDEX isee_persona ON isee (persona_id, anno);

-- The SINA assessment of non self-sufficiency, with the XSD's codes: mobility, daily
-- living, cognitive and behavioural disorders, health care needs, income, support network,
-- the source and the tool of the assessment, and the source of the civil-invalidity data.
-- `invalidita_civile` (InvCiv codes 1..8) and `necessita_interventi` (CodicePrestazione
-- codes) are code lists separated by commas: small fixed vocabularies, always read whole.
CREATE TABLE valutazione_sina (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    data_valutazione {date} NOT NULL,
    mobilita TEXT,
    attivita_vita_quotidiana TEXT,
    disturbi_cognitivi TEXT,
    disturbi_comportamentali TEXT,
    necessita_cure_sanitarie TEXT,
    area_reddituale TEXT,
    area_supporto TEXT,
    fonte_valutazione TEXT,
    strumento_valutazione TEXT,
    fonte_invalidita TEXT,
    invalidita_civile TEXT,
    necessita_interventi TEXT,
    UNIQUE (ente, source_system, source_key)
);
CREATE INDEX valutazione_sina_persona ON valutazione_sina (persona_id, data_valutazione);

-- Court measures concerning a minor (provvedimenti dell'autorità giudiziaria), with the
-- SINBA codes: authority (1 giudice tutelare … 4 tribunale ordinario), type of measure,
-- parental authority and guardianship. `scadenza` is the deadline the court set.
CREATE TABLE provvedimento_ag (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    protocollo TEXT,
    data_segnalazione {date},
    data_provvedimento {date},
    autorita TEXT,
    tipo TEXT,
    potesta_tutela TEXT,
    scadenza {date},
    UNIQUE (ente, source_system, source_key)
);
CREATE INDEX provvedimento_ag_persona ON provvedimento_ag (persona_id, data_provvedimento);

-- The social worker's assessment of a minor taken in charge, as SINBA asks it (one row per
-- assessment; the latest one of the year is sent). Parents' citizenship and region come
-- from their persons in the household (`nucleo_membro`), not from here.
CREATE TABLE valutazione_minore (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    persona_source_key TEXT,
    persona_id {ref},
    presa_in_carico_source_key TEXT,
    presa_in_carico_id {ref},
    data_valutazione {date} NOT NULL,
    data_prima_segnalazione {date},
    fonte_segnalazione TEXT,
    minore_straniero_non_accompagnato {bool},
    condizione_minore TEXT,
    luogo_vita TEXT,
    scuola TEXT,
    condizione_lavoro TEXT,
    disabilita {bool},
    tipo_disabilita TEXT,
    invalidita_certificazioni TEXT,
    padre_titolo_studio TEXT,
    madre_titolo_studio TEXT,
    padre_occupazione TEXT,
    madre_occupazione TEXT,
    valutazione_minore TEXT,
    valutazione_famiglia TEXT,
    affido_forma TEXT,
    affido_tipo TEXT,
    affido_durata TEXT,
    affido_carattere TEXT,
    affido_esito TEXT,
    residenziale_carattere TEXT,
    residenziale_forma TEXT,
    residenziale_tipo TEXT,
    residenziale_esito TEXT,
    chiusura_motivazione TEXT,
    chiusura_situazione TEXT,
    collaborazioni TEXT,
    UNIQUE (ente, source_system, source_key)
);
CREATE INDEX valutazione_minore_persona ON valutazione_minore (persona_id, data_valutazione);

-- The local service catalogue mapped to the national codes: the INPS CodicePrestazione with
-- its denominazione and defaults (means test, periodic or one-off, SIUSS area of users),
-- and the ISTAT area of users and intervention. Loaded from `mappings/` by the pipeline
-- pipelines/siuss/mappature.yaml (source_system `mappings`, source_key the local code).
CREATE TABLE mappatura_prestazione (
    id {id},
    ente TEXT NOT NULL,
    source_system TEXT NOT NULL,
    source_key TEXT NOT NULL,
    loaded_by_run TEXT,
    codice_locale TEXT NOT NULL,
    codice_prestazione TEXT,
    denominazione_prestazione TEXT,
    prova_mezzi TEXT,
    carattere TEXT,
    area_utenza TEXT,
    area_istat TEXT,
    servizio_istat TEXT,
    UNIQUE (ente, source_system, source_key)
);

-- What was sent to INPS, per prestazione (or per SINBA record) and flow type: the hash and
-- the values of the last version sent, so that an unchanged record is not sent again, a
-- changed one is corrected (cancellation of the old version, then the new one) and a
-- withdrawn one is cancelled. `in_invio_*` hold a version written into a file that is
-- not released yet; they become the sent version when the file is.
--   stato: inviato | accettato (INPS esito OK) | scartato (INPS refused it: sent again)
--          | annullato (the cancellation was sent)
CREATE TABLE siuss_invio (
    id {id},
    ente TEXT NOT NULL,
    tipo TEXT NOT NULL,
    chiave TEXT NOT NULL,
    stato TEXT,
    hash TEXT,
    record TEXT,
    id_flusso TEXT,
    run_id TEXT,
    inviato_il TEXT,
    in_invio_hash TEXT,
    in_invio_record TEXT,
    in_invio_operazione TEXT,
    in_invio_flusso TEXT,
    esito TEXT,
    esito_descrizione TEXT,
    esito_il TEXT,
    UNIQUE (ente, tipo, chiave)
);

-- Every flow released, numbered without gaps per ente, type and day
-- (`EEEE.PS.AAAAMMGG.NNNNNNN`). A file flow holds many records (`path`, `sha256`); a WaaS
-- flow holds one beneficiary and one prestazione (`xml`, `chiave`) and waits for INPS to
-- pull it (`ts_flusso`, milliseconds since the epoch, strictly increasing per ente).
CREATE TABLE siuss_flusso (
    id {id},
    ente TEXT NOT NULL,
    tipo TEXT NOT NULL,
    id_flusso TEXT NOT NULL UNIQUE,
    giorno TEXT NOT NULL,
    progressivo {int} NOT NULL,
    canale TEXT NOT NULL,
    run_id TEXT NOT NULL,
    ts_flusso {int},
    chiave TEXT,
    operazione TEXT,
    xml TEXT,
    path TEXT,
    sha256 TEXT,
    records {int},
    creato_il TEXT NOT NULL,
    UNIQUE (ente, tipo, giorno, progressivo)
);
CREATE INDEX siuss_flusso_ts ON siuss_flusso (ente, canale, ts_flusso);

-- The last number used per ente, type and day, and the last ts_flusso per ente
-- (tipo `TS`, giorno ''): taken in the same transaction as the flows they number.
CREATE TABLE siuss_progressivo (
    ente TEXT NOT NULL,
    tipo TEXT NOT NULL,
    giorno TEXT NOT NULL,
    ultimo {int} NOT NULL,
    PRIMARY KEY (ente, tipo, giorno)
);

-- The outcomes INPS posts to the WaaS e-service (POST /esiti), kept as received.
CREATE TABLE siuss_esito (
    id {id},
    id_flusso TEXT NOT NULL,
    tipo TEXT NOT NULL,
    ts_flusso TEXT NOT NULL,
    ts_acquisizione TEXT NOT NULL,
    codice_esito TEXT NOT NULL,
    descrizione_esito TEXT,
    id_acquisizione_siuss TEXT,
    noto {bool} NOT NULL,
    ricevuto_il TEXT NOT NULL,
    UNIQUE (id_flusso, ts_acquisizione, codice_esito)
);
