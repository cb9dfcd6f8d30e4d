//! No input makes a parser panic: random bytes and mutations of real fixtures go through
//! the CSV and JSON-lines sources and the pipeline-file loader, which must answer with
//! records, rejects or errors. (A longer campaign runs with `SNODO_FUZZ_CASES=100000`.)

use std::sync::Arc;

use snodo_connectors::file::csv::{CsvSource, CsvSourceConfig};
use snodo_connectors::file::jsonl::{JsonlSource, JsonlSourceConfig};
use snodo_connectors::{SinkConfig, SourceConfig};
use snodo_core::component::{Source, SourceContext};

/// Deterministic pseudo-random numbers, so a failing case can be replayed from its index.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn cases() -> usize {
    std::env::var("SNODO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A mutation of `seed`: byte flips, interesting bytes, truncation, duplication of a slice.
fn mutate(rng: &mut Lcg, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    if rng.below(10) == 0 {
        return (0..rng.below(2048)).map(|_| rng.next() as u8).collect();
    }
    for _ in 0..=rng.below(8) {
        if v.is_empty() {
            break;
        }
        let at = rng.below(v.len());
        match rng.below(6) {
            0 => v[at] = rng.next() as u8,
            1 => {
                v[at] = *b"\";\n\r,\\{}[]:\x00\xff\xef\x80"
                    .get(rng.below(16))
                    .unwrap_or(&b'"')
            }
            2 => v.truncate(at),
            3 => {
                let end = (at + rng.below(64)).min(v.len());
                let slice = v[at..end].to_vec();
                v.splice(at..at, slice);
            }
            4 => v.insert(at, b'"'),
            _ => {
                v.remove(at);
            }
        }
    }
    v
}

fn drain(source: Box<dyn Source>, rt: &tokio::runtime::Runtime) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let ctx = SourceContext {
        batch_size: 7,
        limit: None,
        personal: Arc::new(vec!["cognome".into()]),
        extra_fields: 3,
    };
    rt.block_on(async move {
        let task = tokio::spawn(source.run(None, ctx, tx));
        while let Some(b) = rx.recv().await {
            assert_eq!(b.read as usize, b.records.len() + b.rejects.len());
        }
        // Ok or a clear error: both are fine, a panic (JoinError) is not.
        let _ = task.await.expect("the source panicked");
    });
}

#[test]
fn csv_source_never_panics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/csv/assistiti_legacy.csv"
    ))
    .unwrap();
    let seed = &seed[..seed.len().min(6000)];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(0xC5F);
    for case in 0..cases() {
        let path = dir.path().join("in.csv");
        std::fs::write(&path, mutate(&mut rng, seed)).unwrap();
        let yaml = format!(
            "path: {}\ndelimiter: \";\"\nencoding: {}\ndecimal_separator: \",\"\nthousands_separator: \".\"\nmax_field_length: 300\ntypes: {{ id_anagrafica: int, data_nascita: date, isee: decimal }}\n",
            path.display(),
            ["utf-8", "windows-1252", "iso-8859-1"][case % 3]
        );
        let cfg: CsvSourceConfig = snodo_core::config::yaml::from_str(&yaml).unwrap();
        drain(Box::new(CsvSource::new(cfg)), &rt);
    }
}

#[test]
fn jsonl_source_never_panics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seed = b"{\"id\": 1, \"nome\": \"Nicol\xc3\xb2\", \"importo\": 12.50, \"l\": [1, {\"a\": null}]}\n{\"id\": 2}\n[1]\n\"x\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(0x1507);
    for _ in 0..cases() {
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, mutate(&mut rng, seed)).unwrap();
        let cfg = JsonlSourceConfig {
            path: path.display().to_string(),
            max_line_length: 200,
        };
        drain(Box::new(JsonlSource::new(cfg)), &rt);
    }
}

#[test]
fn pipeline_loader_never_panics() {
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pipelines/esempio/assistiti_csv_sqlite.yaml"
    ))
    .unwrap();
    let mut rng = Lcg(0x7A3);
    let path = std::path::Path::new("fuzz.yaml");
    for _ in 0..cases() {
        let bytes = mutate(&mut rng, &seed);
        let text = String::from_utf8_lossy(&bytes);
        // Any result is fine; reaching the next iteration is the assertion.
        let _ = snodo_core::config::parse_pipeline::<SourceConfig, SinkConfig>(&text, path);
    }
}
