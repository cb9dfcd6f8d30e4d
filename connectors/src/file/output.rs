//! Crash-safe output files shared by the file sinks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snodo_core::component::{Artifact, SavedCheckpoint};
use snodo_core::error::{Error, Result};

/// What the checkpoint file holds: the pipeline checkpoint plus the output length that
/// goes with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileCheckpoint {
    pipeline: String,
    saved: SavedCheckpoint,
    bytes: u64,
    rows: u64,
    /// Sink-specific state that must survive with the bytes (the XML sink's open group).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    state: serde_json::Value,
    /// Where the finished file goes when that is not the output path itself (a name known
    /// only once the run has started, such as an INPS flow name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<PathBuf>,
}

/// An output file written through `PATH.partial` with an atomically replaced checkpoint.
pub struct OutputFile {
    path: PathBuf,
    partial: PathBuf,
    checkpoint: PathBuf,
    pipeline: String,
    file: Option<File>,
    bytes: u64,
    rows: u64,
    destination: String,
    state: serde_json::Value,
    target: Option<PathBuf>,
    /// SHA-256 of the bytes appended since the file was started, kept as they are written
    /// so that the finished file is not read back to hash it (700 MB for a million SIUSS
    /// prestazioni, at the very end of the run when nothing else runs beside it). `None`
    /// after a resume: the previous run's bytes are then hashed from the file.
    written: Option<Sha256>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(path: &Path) {
    // Makes the rename itself durable; failure only weakens durability, so it is ignored.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl OutputFile {
    /// Prepares the paths; nothing is written yet.
    pub fn new(path: impl Into<PathBuf>, destination: &str) -> Self {
        let path = path.into();
        OutputFile {
            partial: with_suffix(&path, ".partial"),
            checkpoint: with_suffix(&path, ".checkpoint.json"),
            path,
            pipeline: String::new(),
            file: None,
            bytes: 0,
            rows: 0,
            destination: destination.to_string(),
            state: serde_json::Value::Null,
            target: None,
            written: None,
        }
    }

    /// Publishes the finished file under `target` instead of the output path; saved with
    /// the next checkpoint, so that a publication interrupted by a crash completes under
    /// the same name.
    pub fn set_target(&mut self, target: PathBuf) {
        self.target = Some(target);
    }

    fn final_path(&self) -> &Path {
        self.target.as_deref().unwrap_or(&self.path)
    }

    /// The sink state saved with the last checkpoint (`Null` when starting from scratch).
    pub fn state(&self) -> &serde_json::Value {
        &self.state
    }

    /// Sets the sink state saved with the next checkpoint.
    pub fn set_state(&mut self, state: serde_json::Value) {
        self.state = state;
    }

    /// The partial file being written.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written so far (for the lineage key of the next row).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// True when nothing has been written yet (the header is still to come).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Reads the checkpoint left by a previous run of `pipeline`.
    pub fn open(&mut self, pipeline: &str) -> Result<Option<SavedCheckpoint>> {
        self.pipeline = pipeline.to_string();
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
        }
        match std::fs::read(&self.checkpoint) {
            Ok(bytes) => {
                let cp: FileCheckpoint = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Other(format!(
                        "checkpoint file `{}` is unreadable ({e}); delete it to start the output from scratch",
                        self.checkpoint.display()
                    ))
                })?;
                if cp.pipeline != pipeline {
                    return Err(Error::Other(format!(
                        "`{}` belongs to pipeline `{}`, not `{pipeline}`: two pipelines write the same file",
                        self.path.display(),
                        cp.pipeline
                    )));
                }
                // Killed between saving the final checkpoint and the rename: finish the
                // publication now rather than resume into a file that no longer exists.
                if cp.saved.done && self.partial.exists() {
                    let len = std::fs::metadata(&self.partial)
                        .map(|m| m.len())
                        .unwrap_or(0);
                    if len == cp.bytes {
                        let to = cp.target.clone().unwrap_or_else(|| self.path.clone());
                        std::fs::rename(&self.partial, &to)
                            .map_err(|e| Error::io("renaming", &self.partial, e))?;
                        sync_dir(&to);
                    }
                }
                self.state = cp.state.clone();
                self.target = cp.target.clone();
                Ok(Some(cp.saved))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &self.checkpoint, e)),
        }
    }

    /// Starts writing: continues the partial file at the checkpoint, or starts it anew.
    pub fn begin(&mut self, resume: Option<&SavedCheckpoint>) -> Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&self.partial)
            .map_err(|e| Error::io("creating", &self.partial, e))?;
        let (bytes, rows, state, target) = match resume {
            Some(_) => {
                let raw = std::fs::read(&self.checkpoint)
                    .map_err(|e| Error::io("reading", &self.checkpoint, e))?;
                let cp: FileCheckpoint = serde_json::from_slice(&raw).map_err(|e| {
                    Error::Other(format!("checkpoint `{}`: {e}", self.checkpoint.display()))
                })?;
                (cp.bytes, cp.rows, cp.state, cp.target)
            }
            None => (0, 0, serde_json::Value::Null, None),
        };
        let actual = file
            .metadata()
            .map_err(|e| Error::io("reading", &self.partial, e))?
            .len();
        if actual < bytes {
            // Never pad with zeros: a partial file shorter than its checkpoint was removed or
            // truncated by someone else, and its content cannot be trusted.
            return Err(Error::Other(format!(
                "`{}` has {actual} bytes but its checkpoint says {bytes}: the partial output was changed outside snodo; \
                 delete it and `{}` to write the output from scratch",
                self.partial.display(),
                self.checkpoint.display()
            )));
        }
        // Whatever was appended after the last checkpoint belongs to a batch that will be
        // written again: cut it off.
        file.set_len(bytes)
            .map_err(|e| Error::io("truncating", &self.partial, e))?;
        file.seek(SeekFrom::Start(bytes))
            .map_err(|e| Error::io("seeking", &self.partial, e))?;
        self.file = Some(file);
        self.written = resume.is_none().then(Sha256::new);
        self.bytes = bytes;
        self.rows = rows;
        self.state = state;
        self.target = target;
        Ok(())
    }

    /// Appends the closing bytes of the output (an XML document's end tags) without a new
    /// checkpoint: a crash before [`finish`](Self::finish) cuts them off again, and
    /// `finish` counts them in the final checkpoint.
    pub fn append_tail(&mut self, data: &[u8]) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Other("output file written before begin()".into()))?;
        file.write_all(data)
            .map_err(|e| Error::io("writing", &self.partial, e))?;
        file.sync_data()
            .map_err(|e| Error::io("syncing", &self.partial, e))?;
        if let Some(h) = &mut self.written {
            h.update(data);
        }
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Size and SHA-256 of the partial file as written so far.
    pub fn content_hash(&self) -> Result<(u64, String)> {
        self.hash_of(&self.partial)
    }

    /// Size and SHA-256 of the bytes written, the file now at `path`: from the hash kept
    /// while writing, or read from the file after a resume.
    fn hash_of(&self, path: &Path) -> Result<(u64, String)> {
        match &self.written {
            Some(h) => Ok((self.bytes, hex::encode(h.clone().finalize()))),
            None => hash_file(path),
        }
    }

    /// Completes a publication that a crash interrupted after the whole file, tail
    /// included, was written and recorded elsewhere (the siuss sink's flow registry, with
    /// the file's SHA-256): the partial file is published as it is, if its hash is
    /// `sha256`.
    pub fn adopt_complete(&mut self, saved: &SavedCheckpoint, sha256: &str) -> Result<Artifact> {
        let (size, actual) = hash_file(&self.partial)?;
        if actual != sha256 {
            return Err(Error::Other(format!(
                "`{}` is not the file that was released (SHA-256 {actual}, registered {sha256}); \
                 it was changed outside snodo: restore it or remove it and its checkpoint",
                self.partial.display()
            )));
        }
        self.file = None;
        self.bytes = size;
        self.finish_hashed(saved, size, actual)
    }

    /// Gives up the output: the partial file and the checkpoint are removed (a run that
    /// had nothing to deliver publishes nothing).
    pub fn discard(&mut self) -> Result<()> {
        self.file = None;
        for p in [&self.partial, &self.checkpoint] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", p, e)),
            }
        }
        Ok(())
    }

    /// Appends `data` holding `rows` rows, makes it durable, then records the checkpoint.
    pub fn append(&mut self, data: &[u8], rows: u64, saved: &SavedCheckpoint) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Other("output file written before begin()".into()))?;
        file.write_all(data)
            .map_err(|e| Error::io("writing", &self.partial, e))?;
        file.sync_data()
            .map_err(|e| Error::io("syncing", &self.partial, e))?;
        if let Some(h) = &mut self.written {
            h.update(data);
        }
        self.bytes += data.len() as u64;
        self.rows += rows;
        self.save_checkpoint(saved)
    }

    fn save_checkpoint(&self, saved: &SavedCheckpoint) -> Result<()> {
        let cp = FileCheckpoint {
            pipeline: self.pipeline.clone(),
            saved: saved.clone(),
            bytes: self.bytes,
            rows: self.rows,
            state: self.state.clone(),
            target: self.target.clone(),
        };
        let tmp = with_suffix(&self.checkpoint, ".tmp");
        let body = serde_json::to_vec_pretty(&cp).map_err(|e| Error::Other(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        f.write_all(&body)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, &self.checkpoint).map_err(|e| Error::io("renaming", &tmp, e))?;
        sync_dir(&self.checkpoint);
        Ok(())
    }

    /// Publishes the file: renames it into place and records the checkpoint as done.
    pub fn finish(&mut self, saved: &SavedCheckpoint) -> Result<Artifact> {
        self.publish(saved, None)
    }

    /// [`finish`](Self::finish) for a caller that has just hashed the complete partial file
    /// (the SIUSS sink registers the hash before the rename): the rename does not change
    /// the content, so the file is not read a second time (700 MB for a million
    /// prestazioni).
    pub fn finish_hashed(
        &mut self,
        saved: &SavedCheckpoint,
        size: u64,
        sha256: String,
    ) -> Result<Artifact> {
        self.publish(saved, Some((size, sha256)))
    }

    fn publish(
        &mut self,
        saved: &SavedCheckpoint,
        hashed: Option<(u64, String)>,
    ) -> Result<Artifact> {
        if let Some(f) = self.file.take() {
            f.sync_all()
                .map_err(|e| Error::io("syncing", &self.partial, e))?;
        }
        // The `done` checkpoint goes first: a kill before the rename is completed by the next
        // `open`; the other order would leave a checkpoint pointing at a vanished partial.
        self.save_checkpoint(saved)?;
        let to = self.final_path().to_path_buf();
        std::fs::rename(&self.partial, &to).map_err(|e| Error::io("renaming", &self.partial, e))?;
        sync_dir(&to);
        let (size, sha256) = match hashed {
            Some(h) => h,
            None => self.hash_of(&to)?,
        };
        Ok(Artifact {
            path: to.display().to_string(),
            size,
            sha256,
            rows: self.rows,
            destination: self.destination.clone(),
            checks: Vec::new(),
        })
    }
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(done: bool) -> SavedCheckpoint {
        SavedCheckpoint {
            fingerprint: "f".into(),
            position: serde_json::Value::Null,
            done,
            run_id: "r".into(),
            records_read: 0,
            records_written: 0,
            records_rejected: 0,
        }
    }

    fn sha256_of(path: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    }

    #[test]
    fn the_artifact_hash_is_the_published_files_whether_or_not_the_run_resumed() {
        let dir = tempfile::tempdir().unwrap();
        // Uninterrupted: the hash kept while appending, then the tail.
        let path = dir.path().join("whole.xml");
        let mut out = OutputFile::new(&path, "file");
        assert!(out.open("p").unwrap().is_none());
        out.begin(None).unwrap();
        out.append(b"<a>", 1, &saved(false)).unwrap();
        out.append(&[b'x'; 100_000], 1, &saved(false)).unwrap();
        out.append_tail(b"</a>").unwrap();
        assert_eq!(
            out.content_hash().unwrap(),
            hash_file(out.partial()).unwrap()
        );
        let a = out.finish(&saved(true)).unwrap();
        assert_eq!(
            (a.size, a.sha256.as_str()),
            (100_007, sha256_of(&path).as_str())
        );

        // Killed after its first batch, with a second batch half written: the resumed run
        // cuts it off and writes it again; the hash covers the first run's bytes too.
        let path = dir.path().join("resumed.xml");
        let mut out = OutputFile::new(&path, "file");
        out.open("p").unwrap();
        out.begin(None).unwrap();
        out.append(b"<a>first", 1, &saved(false)).unwrap();
        out.file
            .as_mut()
            .unwrap()
            .write_all(b"half of the second")
            .unwrap();
        drop(out);
        let mut out = OutputFile::new(&path, "file");
        let resume = out.open("p").unwrap().expect("a checkpoint");
        out.begin(Some(&resume)).unwrap();
        out.append(b"second", 1, &saved(false)).unwrap();
        out.append_tail(b"</a>").unwrap();
        assert_eq!(
            out.content_hash().unwrap(),
            hash_file(out.partial()).unwrap()
        );
        let a = out.finish(&saved(true)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"<a>firstsecond</a>");
        assert_eq!((a.size, a.sha256.as_str()), (18, sha256_of(&path).as_str()));
    }
}
