//! File connectors: CSV and JSON lines, read and written as streams.
//!
//! Sinks write to `PATH.partial` and keep a checkpoint file `PATH.checkpoint.json` that is
//! replaced atomically (write, fsync, rename) after every batch; the finished file is
//! renamed into place at the end. A killed run leaves a partial file that the next run
//! truncates to the last checkpoint and continues.

pub mod csv;
pub mod encoding;
pub mod jsonl;
pub mod output;
pub mod xml;

use std::path::Path;

use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{deepest, problem};

/// Lint check shared by the file sources: the input file must exist when the pipeline is
/// checked, with the path problem pointing at `source.KIND.path`.
pub(crate) fn check_input_file(
    node: &Node,
    path: &str,
    kind: &str,
    file: &str,
    out: &mut Vec<Problem>,
) {
    if !Path::new(file).is_file() {
        out.push(problem(
            deepest(node, &[kind, "path"]),
            &format!("{path}.{kind}.path"),
            format!("file `{file}` not found (paths are relative to the working directory)"),
        ));
    }
}

/// `path|size|mtime|sha256 of the first 64 KiB`: the same file unchanged gives the same
/// fingerprint, so a checkpoint is never applied to a different file that happens to have
/// the same name — even one rewritten with the same size and a preserved mtime (`cp -p`).
pub fn file_fingerprint(path: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut head = Vec::with_capacity(1 << 16);
            if let Ok(f) = std::fs::File::open(path) {
                let _ = f.take(1 << 16).read_to_end(&mut head);
            }
            let digest = hex::encode(sha2::Sha256::digest(&head));
            format!("{}|{}|{}|{}", path.display(), m.len(), mtime, &digest[..16])
        }
        Err(_) => format!("{}|missing", path.display()),
    }
}
