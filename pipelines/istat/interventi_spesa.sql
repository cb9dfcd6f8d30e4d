-- ISTAT "Interventi e servizi sociali dei comuni singoli e associati": one row per
-- intervention of the ente GE with its ISTAT area of users and ISTAT intervention (from
-- mappatura_prestazione, loaded by pipelines/siuss/mappature.yaml) and who paid for it.
-- Unmapped services fall in area/intervention `ND`, so they are counted and visible in the
-- output instead of silently dropped. snodo pages by the key (area, service, person,
-- intervention), which is the order the `aggregate` step needs.
SELECT
    COALESCE(m.area_istat, 'ND') AS area_istat,
    COALESCE(m.servizio_istat, 'ND') AS servizio_istat,
    i.persona_id,
    i.id AS intervento_id,
    i.data_inizio,
    i.data_fine,
    i.importo,
    i.importo_mensile,
    i.periodo_erogazione,
    i.quota_ente,
    i.quota_utente,
    i.quota_ssn
FROM intervento i
LEFT JOIN intervento_catalogo c ON c.id = i.catalogo_id
LEFT JOIN mappatura_prestazione m
    ON m.ente = i.ente AND m.source_system = 'mappings' AND m.codice_locale = c.codice
WHERE i.ente = 'GE' AND i.duplicato_di IS NULL AND (i.annullato IS NULL OR i.annullato = 0)
