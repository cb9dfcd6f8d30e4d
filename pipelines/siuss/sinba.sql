-- Minors of the ente GE for INPS SIUSS SINBA: one row per minor and year, from the latest
-- assessment of the minor in that year (valutazione_minore), with the court measure in
-- force, the household (nucleo_membro, seen from the minor), the parents' citizenship
-- and residence, the DSU of the year and the national codes of the prestazioni received.
-- Plain SQL for SQLite (3.44+) and PostgreSQL alike. The codice fiscale is read only to
-- compute the pseudonym and dropped by the pipeline before anything is written.
SELECT
    vm.persona_id,
    CAST(substr(CAST(vm.data_valutazione AS TEXT), 1, 4) AS INTEGER) AS anno,
    p.codice_fiscale,
    p.data_nascita,
    p.comune_residenza,
    vm.data_valutazione,
    vm.data_prima_segnalazione,
    vm.fonte_segnalazione,
    vm.minore_straniero_non_accompagnato,
    vm.condizione_minore,
    vm.luogo_vita,
    vm.scuola,
    vm.condizione_lavoro,
    vm.disabilita,
    vm.tipo_disabilita,
    vm.invalidita_certificazioni,
    vm.padre_titolo_studio,
    vm.madre_titolo_studio,
    vm.padre_occupazione,
    vm.madre_occupazione,
    vm.valutazione_minore,
    vm.valutazione_famiglia,
    vm.affido_forma,
    vm.affido_tipo,
    vm.affido_durata,
    vm.affido_carattere,
    vm.affido_esito,
    vm.residenziale_carattere,
    vm.residenziale_forma,
    vm.residenziale_tipo,
    vm.residenziale_esito,
    vm.chiusura_motivazione,
    vm.chiusura_situazione,
    vm.collaborazioni,
    pr.data_segnalazione AS data_segnalazione_ag,
    pr.data_provvedimento AS data_provvedimento_ag,
    pr.autorita AS autorita_provvedimento,
    pr.tipo AS tipo_provvedimento,
    pr.potesta_tutela,
    e.componenti AS isee_componenti,
    e.valore AS valore_isee,
    (SELECT string_agg(m.codice_prestazione, ',')
       FROM intervento i
       JOIN intervento_catalogo c ON c.id = i.catalogo_id
       JOIN mappatura_prestazione m
         ON m.ente = i.ente AND m.source_system = 'mappings' AND m.codice_locale = c.codice
      WHERE i.persona_id = vm.persona_id AND i.duplicato_di IS NULL
        AND substr(CAST(i.data_inizio AS TEXT), 1, 4) <= substr(CAST(vm.data_valutazione AS TEXT), 1, 4)
        AND (i.data_fine IS NULL
             OR substr(CAST(i.data_fine AS TEXT), 1, 4) >= substr(CAST(vm.data_valutazione AS TEXT), 1, 4))
    ) AS prestazioni,
    (SELECT string_agg(CASE
              WHEN nm2.relazione IN ('IS', 'CG') AND pp.sesso = 'F' THEN '1'
              WHEN nm2.relazione IN ('IS', 'CG') THEN '2'
              WHEN nm2.relazione = 'FG' THEN '3'
              WHEN nm2.relazione = 'GE' THEN '4'
              ELSE '6' END, ',')
       FROM nucleo_membro nm1
       JOIN nucleo_membro nm2 ON nm2.nucleo_id = nm1.nucleo_id AND nm2.persona_id <> nm1.persona_id
       JOIN persona pp ON pp.id = nm2.persona_id
      WHERE nm1.persona_id = vm.persona_id AND nm1.relazione = 'FG'
    ) AS famiglia,
    (SELECT pp.cittadinanza FROM nucleo_membro nm1
       JOIN nucleo_membro nm2 ON nm2.nucleo_id = nm1.nucleo_id AND nm2.persona_id <> nm1.persona_id
       JOIN persona pp ON pp.id = nm2.persona_id
      WHERE nm1.persona_id = vm.persona_id AND nm1.relazione = 'FG'
        AND nm2.relazione IN ('IS', 'CG') AND pp.sesso = 'F'
      ORDER BY pp.id LIMIT 1) AS madre_cittadinanza,
    (SELECT pp.comune_residenza FROM nucleo_membro nm1
       JOIN nucleo_membro nm2 ON nm2.nucleo_id = nm1.nucleo_id AND nm2.persona_id <> nm1.persona_id
       JOIN persona pp ON pp.id = nm2.persona_id
      WHERE nm1.persona_id = vm.persona_id AND nm1.relazione = 'FG'
        AND nm2.relazione IN ('IS', 'CG') AND pp.sesso = 'F'
      ORDER BY pp.id LIMIT 1) AS madre_residenza,
    (SELECT pp.cittadinanza FROM nucleo_membro nm1
       JOIN nucleo_membro nm2 ON nm2.nucleo_id = nm1.nucleo_id AND nm2.persona_id <> nm1.persona_id
       JOIN persona pp ON pp.id = nm2.persona_id
      WHERE nm1.persona_id = vm.persona_id AND nm1.relazione = 'FG'
        AND nm2.relazione IN ('IS', 'CG') AND pp.sesso = 'M'
      ORDER BY pp.id LIMIT 1) AS padre_cittadinanza,
    (SELECT pp.comune_residenza FROM nucleo_membro nm1
       JOIN nucleo_membro nm2 ON nm2.nucleo_id = nm1.nucleo_id AND nm2.persona_id <> nm1.persona_id
       JOIN persona pp ON pp.id = nm2.persona_id
      WHERE nm1.persona_id = vm.persona_id AND nm1.relazione = 'FG'
        AND nm2.relazione IN ('IS', 'CG') AND pp.sesso = 'M'
      ORDER BY pp.id LIMIT 1) AS padre_residenza
FROM valutazione_minore vm
JOIN persona p ON p.id = vm.persona_id
LEFT JOIN provvedimento_ag pr ON pr.id = (
    SELECT pr2.id FROM provvedimento_ag pr2
    WHERE pr2.persona_id = vm.persona_id AND pr2.data_provvedimento <= vm.data_valutazione
    ORDER BY pr2.data_provvedimento DESC, pr2.id DESC
    LIMIT 1)
LEFT JOIN isee e ON e.id = (
    SELECT e2.id FROM isee e2
    WHERE e2.persona_id = vm.persona_id
      AND e2.anno <= CAST(substr(CAST(vm.data_valutazione AS TEXT), 1, 4) AS INTEGER)
    ORDER BY e2.anno DESC, e2.id DESC
    LIMIT 1)
WHERE vm.ente = 'GE'
  AND vm.id = (
    SELECT v2.id FROM valutazione_minore v2
    WHERE v2.persona_id = vm.persona_id
      AND substr(CAST(v2.data_valutazione AS TEXT), 1, 4) = substr(CAST(vm.data_valutazione AS TEXT), 1, 4)
    ORDER BY v2.data_valutazione DESC, v2.id DESC
    LIMIT 1)
