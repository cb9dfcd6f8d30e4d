//! The flows INPS publishes as examples in its WaaS OpenAPI (base64 `flusso` values) read
//! through snodo's layouts and written back: the records carry every value, the rewritten
//! document is the same tree (attribute order and indentation aside), and both snodo's
//! validator and libxml2 accept it.

use std::path::{Path, PathBuf};
use std::process::Command;

use indexmap::IndexMap;
use snodo_connectors::file::xml::Layout;
use snodo_connectors::file::xml::source::Extractor;
use snodo_connectors::file::xml::writer::XmlWriter;
use snodo_core::value::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn waas_examples() -> Vec<Vec<u8>> {
    let yaml = std::fs::read_to_string(repo().join("specs/siuss/waas-api-comuni.yaml")).unwrap();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        let b64 = if t == "flusso: >-" {
            lines[i + 1].trim().to_string()
        } else if let Some(v) = t.strip_prefix("example: \"PEZs") {
            format!("PEZs{}", v.trim_end_matches('"'))
        } else {
            continue;
        };
        out.push(data_encoding::BASE64.decode(b64.as_bytes()).unwrap());
    }
    out
}

/// A document as a comparable tree: name, sorted attributes, trimmed text, children.
#[derive(Debug, PartialEq)]
struct Tree {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Tree>,
}

fn tree(xml: &[u8]) -> Tree {
    let mut r = quick_xml::Reader::from_reader(xml);
    r.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Tree> = Vec::new();
    let mut buf = Vec::new();
    loop {
        match r.read_event_into(&mut buf).unwrap() {
            quick_xml::events::Event::Start(e) => {
                let mut attrs: Vec<(String, String)> = e
                    .attributes()
                    .map(|a| a.unwrap())
                    .filter(|a| !a.key.0.starts_with("xmlns") && !a.key.0.starts_with("xsi:"))
                    .map(|a| (a.key.0.to_string(), a.value.to_string()))
                    .collect();
                attrs.sort();
                stack.push(Tree {
                    name: e.local_name().as_ref().to_string(),
                    attrs,
                    text: String::new(),
                    children: Vec::new(),
                });
            }
            quick_xml::events::Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(t.xml10_content().trim());
                }
            }
            quick_xml::events::Event::End(_) => {
                let t = stack.pop().unwrap();
                match stack.last_mut() {
                    Some(p) => p.children.push(t),
                    None => return t,
                }
            }
            quick_xml::events::Event::Eof => panic!("document ended early"),
            _ => {}
        }
        buf.clear();
    }
}

#[test]
fn inps_examples_round_trip_through_the_layouts() {
    let examples = waas_examples();
    assert_eq!(examples.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    for (n, doc) in examples.iter().enumerate() {
        let text = String::from_utf8_lossy(doc);
        let (layout_file, xsd) = if text.contains("<SINBA ") {
            ("sinba.yaml", "SINBA.xsd")
        } else {
            ("ps-psa.yaml", "PS_PSA_SINA201812.xsd")
        };
        let layout = Layout::load(&repo().join("specs/siuss").join(layout_file)).unwrap();
        let mut ex = Extractor::new(&layout);
        let mut records = Vec::new();
        let outside = ex
            .read(doc.as_slice(), |x| {
                assert!(x.violations.is_empty(), "{:?}", x.violations);
                records.push(x.record);
                true
            })
            .unwrap();
        assert!(outside.is_empty(), "{outside:?}");
        assert!(!records.is_empty());
        // Values come back typed by the schema.
        let first = &records[0];
        if layout_file == "ps-psa.yaml" {
            assert!(matches!(
                first.get("importo_mensile"),
                Some(Value::Decimal(_)) | Some(Value::Null)
            ));
            assert!(matches!(
                first.get("periodo_erogazione"),
                Some(Value::Int(_))
            ));
            assert!(matches!(first.get("data_inizio"), Some(Value::Date(_))));
            assert!(matches!(first.get("sina_necessita"), Some(Value::List(l)) if !l.is_empty()));
        } else {
            assert_eq!(
                first.get("data_prima_segnalazione"),
                Some(&Value::Str("01/2010".into()))
            );
            assert_eq!(
                first.get("famiglia"),
                Some(&Value::List(vec![
                    Value::Str("1".into()),
                    Value::Str("2".into())
                ]))
            );
        }
        let params: IndexMap<String, String> = [
            "flow_name",
            "ente_codice",
            "ente_denominazione",
            "ente_indirizzo",
            "cf_operatore",
        ]
        .iter()
        .filter_map(|p| {
            first
                .get(p)
                .and_then(Value::to_text)
                .map(|v| (p.to_string(), v))
        })
        .collect();
        let header = layout.render_header(&params).unwrap();
        let mut w = XmlWriter::new(layout.clone());
        let mut out = String::new();
        w.start_document(&header, &mut out);
        for r in &records {
            let rendered = layout.render_record(r, &params).unwrap_or_else(|p| {
                panic!("{:?}", p.iter().map(|p| p.reason()).collect::<Vec<_>>())
            });
            w.write(&rendered, &mut out);
        }
        w.end_document(&mut out);
        assert_eq!(
            tree(out.as_bytes()),
            tree(doc),
            "example {n} changed on its way through snodo:\n{out}"
        );
        assert!(layout.schema.validate_reader(out.as_bytes(), 10).is_empty());
        let f = dir.path().join(format!("rewritten-{n}.xml"));
        std::fs::write(&f, &out).unwrap();
        let lint = Command::new("xmllint")
            .args(["--noout", "--schema"])
            .arg(repo().join("specs/siuss").join(xsd))
            .arg(&f)
            .output()
            .expect("xmllint (libxml2-utils) is needed by the tests");
        assert!(
            lint.status.success(),
            "{}",
            String::from_utf8_lossy(&lint.stderr)
        );
    }
}

#[test]
fn layout_mistakes_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("specs/siuss/PS_PSA_SINA201812.xsd"),
        dir.path().join("ps.xsd"),
    )
    .unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "schema: ps.xsd\nroot: Flusso\nrecord:\n  element: Beneficiario\n  group_by: [persona_id]\n  attributes:\n    CodiceFiscal: cf\n  children:\n    - element: Anagrafica\n      attributes: { Cognome: cognome }\n    - element: Prestazione\n      each: record\n",
    )
    .unwrap();
    let e = Layout::load(&f).unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml:7:") && e.contains("no attribute `CodiceFiscal`"),
        "{e}"
    );
    assert!(e.contains("requires attribute `CodiceFiscale`"), "{e}");
    assert!(
        e.contains("requires attribute `Nome` on <Anagrafica>"),
        "{e}"
    );
    assert!(e.contains("no <Prestazione> inside <Beneficiario>"), "{e}");
}

/// A record that breaks the schema, or holds a character XML 1.0 cannot carry, is refused
/// with every problem naming its field (a record that passes is rendered without tracking
/// fields, so this is the path that tracks them).
#[test]
fn refused_records_name_the_field_of_each_problem() {
    let layout = Layout::load(&repo().join("specs/siuss/ps-psa.yaml")).unwrap();
    let doc = waas_examples()
        .into_iter()
        .find(|d| !String::from_utf8_lossy(d).contains("<SINBA "))
        .unwrap();
    let mut records = Vec::new();
    Extractor::new(&layout)
        .read(doc.as_slice(), |x| {
            records.push(x.record);
            true
        })
        .unwrap();
    let good = records.remove(0);
    let params = IndexMap::new();
    assert!(layout.render_record(&good, &params).is_ok());

    let with = |field: &str, v: Value| {
        let mut r = good.clone();
        let i = r.schema.index_of(field).unwrap();
        r.values[i] = v;
        layout.render_record(&r, &params).unwrap_err()
    };
    let bad_cf = with("codice_fiscale", Value::Str("RSSMRA".into()));
    assert!(
        bad_cf
            .iter()
            .any(|p| p.field.as_deref() == Some("codice_fiscale")),
        "{:?}",
        bad_cf.iter().map(|p| p.reason()).collect::<Vec<_>>()
    );
    let control = with("protocollo_domanda", Value::Str("GE-2025\u{1}-1".into()));
    assert_eq!(control.len(), 1, "{control:?}");
    assert_eq!(control[0].field.as_deref(), Some("protocollo_domanda"));
    assert!(
        control[0].reason().contains("U+0001"),
        "{}",
        control[0].reason()
    );
}
