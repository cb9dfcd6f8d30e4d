//! snodo's XSD validator against libxml2 on the official INPS schemas: the three flows
//! embedded (base64) in INPS's WaaS OpenAPI, the constructed example, and some two
//! thousand mutations of them. For every document both must give the same verdict; a
//! disagreement names the document and both answers.

use std::path::{Path, PathBuf};
use std::process::Command;

use snodo_connectors::file::xml::xsd::Schema;

fn specs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/siuss")
}

/// The `flusso` values of the OpenAPI examples, decoded, with the type they declare.
fn waas_examples() -> Vec<(String, Vec<u8>)> {
    let yaml = std::fs::read_to_string(specs().join("waas-api-comuni.yaml")).unwrap();
    let mut out = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        let b64 = if let Some(v) = t.strip_prefix("flusso: >-") {
            assert!(v.trim().is_empty());
            lines[i + 1].trim().to_string()
        } else if let Some(v) = t.strip_prefix("example: \"PEZs") {
            format!("PEZs{}", v.trim_end_matches('"'))
        } else {
            continue;
        };
        let bytes = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
        let tipo = if String::from_utf8_lossy(&bytes).contains("<SINBA ") {
            "SINBA"
        } else {
            "PS"
        };
        out.push((tipo.to_string(), bytes));
    }
    assert_eq!(out.len(), 3, "the OpenAPI file carries three example flows");
    out
}

fn xmllint_verdicts(xsd: &Path, files: &[PathBuf]) -> Vec<bool> {
    let mut verdicts = Vec::with_capacity(files.len());
    for chunk in files.chunks(400) {
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(xsd)
            .args(chunk)
            .output()
            .expect("xmllint is needed by the tests: install libxml2-utils (scripts/test.sh does)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for f in chunk {
            let name = f.display().to_string();
            let ok = stderr.lines().any(|l| l == format!("{name} validates"));
            let bad = stderr.lines().any(|l| {
                l == format!("{name} fails to validate") || l.starts_with(&format!("{name}:"))
            });
            assert!(
                ok != bad || bad,
                "xmllint said nothing clear about {name}:\n{stderr}"
            );
            verdicts.push(ok && !bad);
        }
    }
    verdicts
}

/// Probe values that exercise every facet of the two schemas.
const PROBES: &[&str] = &[
    "",
    "X",
    "1",
    "2",
    "3",
    "9",
    "10",
    "13",
    "0",
    "-1",
    "1.5",
    "1,5",
    "12.345",
    "2020",
    "20x0",
    "2020-02-29",
    "2021-02-29",
    "2020-2-1",
    "03/2012",
    "13/2012",
    "3/2012",
    "AAABBB39M66A351C",
    "AAABBB39M66A35LC",
    "12345678901",
    "12345678901     ",
    "12345678901      ",
    "A1.02",
    "A1",
    "ABCDEFGHIJK",
    "Contributi economici",
    "H501",
    "H50",
    "068001",
    "01",
    "380",
    "38",
    " 12 ",
    "1e3",
    "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
];

fn mutations(doc: &str) -> Vec<String> {
    let attr = regex::Regex::new(r#" ([A-Za-z]+)="([^"]*)""#).unwrap();
    let mut out = Vec::new();
    for m in attr.captures_iter(doc) {
        let whole = m.get(0).unwrap();
        if m[1].starts_with("xmlns") {
            continue;
        }
        for p in PROBES {
            let mut d = doc.to_string();
            d.replace_range(whole.range(), &format!(" {}=\"{p}\"", &m[1]));
            out.push(d);
        }
        let mut d = doc.to_string();
        d.replace_range(whole.range(), "");
        out.push(d);
    }
    // Element-level: drop or repeat each line that holds a whole element, and add an
    // element the schema does not know.
    let lines: Vec<&str> = doc.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with('<') && (t.ends_with("/>") || (t.contains("</") && !t.starts_with("</"))) {
            let mut drop = lines.clone();
            drop.remove(i);
            out.push(drop.join("\n"));
            let mut dup = lines.clone();
            dup.insert(i, l);
            out.push(dup.join("\n"));
            let mut extra = lines.clone();
            extra.insert(i, "<Sconosciuto/>");
            out.push(extra.join("\n"));
        }
    }
    out
}

#[test]
fn the_inps_examples_validate_and_every_mutation_gets_libxml2s_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let ps = specs().join("PS_PSA_SINA201812.xsd");
    let sinba = specs().join("SINBA.xsd");
    let schemas = [
        ("PS", Schema::load(&ps).unwrap(), ps.clone()),
        ("SINBA", Schema::load(&sinba).unwrap(), sinba.clone()),
    ];
    let mut seeds = waas_examples();
    seeds.push((
        "PS".into(),
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/siuss/ps_psa_sina_constructed.xml"),
        )
        .unwrap(),
    ));
    let mut checked = 0;
    for (tipo, schema, xsd) in &schemas {
        let mut docs = Vec::new();
        for (t, bytes) in &seeds {
            if t != tipo {
                continue;
            }
            let text = String::from_utf8(bytes.clone()).unwrap();
            let v = schema.validate_reader(text.as_bytes(), 10);
            assert!(
                v.is_empty(),
                "an INPS example ({tipo}) must validate: {v:#?}"
            );
            docs.push(text.clone());
            docs.extend(mutations(&text));
        }
        let files: Vec<PathBuf> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let f = dir.path().join(format!("{tipo}-{i:05}.xml"));
                std::fs::write(&f, d).unwrap();
                f
            })
            .collect();
        let referee = xmllint_verdicts(xsd, &files);
        let mut disagreements = Vec::new();
        let mut invalid = 0;
        for ((doc, file), libxml_ok) in docs.iter().zip(&files).zip(referee) {
            let ours = schema.validate_reader(doc.as_bytes(), 10);
            if !libxml_ok {
                invalid += 1;
            }
            if ours.is_empty() != libxml_ok {
                let libxml = Command::new("xmllint")
                    .args(["--noout", "--schema"])
                    .arg(xsd)
                    .arg(file)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                disagreements.push(format!(
                    "{}: libxml2 says {} ({}), snodo says {:?}",
                    file.display(),
                    if libxml_ok { "valid" } else { "invalid" },
                    libxml.lines().next().unwrap_or_default(),
                    ours.iter().map(|v| v.to_string()).collect::<Vec<_>>()
                ));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} of {} documents judged differently:\n{}",
            disagreements.len(),
            docs.len(),
            disagreements[..disagreements.len().min(15)].join("\n")
        );
        assert!(
            invalid > docs.len() / 3,
            "the mutations must break the schema often"
        );
        checked += docs.len();
    }
    assert!(checked > 1500, "{checked} documents checked");
}
