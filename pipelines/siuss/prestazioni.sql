-- Prestazioni of the ente GE for INPS SIUSS (PS/PSA with SINA): one row per intervention of
-- a person, with the DSU in force in the year the prestazione starts and the latest SINA
-- assessment made before it started. Plain SQL that SQLite and PostgreSQL both run; snodo
-- adds the keyset paging (ORDER BY persona_id, intervento_id), so the rows of one person
-- are consecutive and the sink writes them under one <Beneficiario>.
SELECT
    i.persona_id,
    i.id AS intervento_id,
    i.source_key AS intervento_source_key,
    p.codice_fiscale,
    p.cognome,
    p.nome,
    p.sesso,
    p.data_nascita,
    p.comune_nascita,
    p.cittadinanza,
    p.seconda_cittadinanza,
    p.comune_residenza,
    c.codice AS codice_locale,
    m.codice_prestazione,
    m.denominazione_prestazione,
    m.prova_mezzi,
    m.carattere,
    m.area_utenza,
    i.protocollo_domanda,
    i.data_evento,
    i.data_inizio,
    i.data_fine,
    i.data_erogazione,
    i.importo,
    i.importo_mensile,
    i.periodo_erogazione,
    i.ore_mensili,
    i.quota_ente,
    i.quota_utente,
    i.quota_ssn,
    i.quota_richiesta,
    i.presa_in_carico_id,
    i.annullato,
    e.protocollo_dsu,
    e.data_dsu,
    e.valore AS valore_isee,
    v.mobilita AS sina_mobilita,
    v.attivita_vita_quotidiana AS sina_adl,
    v.disturbi_cognitivi AS sina_cognitivo,
    v.disturbi_comportamentali AS sina_comportamentale,
    v.necessita_cure_sanitarie AS sina_cure_sanitarie,
    v.area_reddituale AS sina_reddituale,
    v.area_supporto AS sina_supporto,
    v.fonte_valutazione AS sina_fonte,
    v.strumento_valutazione AS sina_strumento,
    v.fonte_invalidita AS sina_fonte_invalidita,
    v.invalidita_civile AS sina_invalidita,
    v.necessita_interventi AS sina_necessita
FROM intervento i
JOIN persona p ON p.id = i.persona_id
LEFT JOIN intervento_catalogo c ON c.id = i.catalogo_id
LEFT JOIN mappatura_prestazione m
    ON m.ente = i.ente AND m.source_system = 'mappings' AND m.codice_locale = c.codice
LEFT JOIN isee e ON e.id = (
    SELECT e2.id FROM isee e2
    WHERE e2.persona_id = i.persona_id
      AND e2.anno <= CAST(substr(CAST(i.data_inizio AS TEXT), 1, 4) AS INTEGER)
    ORDER BY e2.anno DESC, e2.id DESC
    LIMIT 1)
LEFT JOIN valutazione_sina v ON v.id = (
    SELECT v2.id FROM valutazione_sina v2
    WHERE v2.persona_id = i.persona_id AND v2.data_valutazione <= i.data_inizio
    ORDER BY v2.data_valutazione DESC, v2.id DESC
    LIMIT 1)
WHERE i.ente = 'GE' AND i.duplicato_di IS NULL
