//! Secrets: resolved from `${env:NAME}` or `${file:/path}` references, never written in
//! YAML, never printed.
//!
//! Every resolved secret is remembered in a process-wide registry and [`redact`] replaces
//! it in any text that leaves the process (errors, logs, the flow log): a database driver
//! that echoes a connection string cannot leak the password through snodo.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

fn registry() -> &'static Mutex<Vec<String>> {
    static R: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers a secret value so that [`redact`] removes it from any text.
pub fn register(value: &str) {
    // Very short values would turn every message into stars without protecting anything.
    if value.len() < 4 {
        return;
    }
    if let Ok(mut r) = registry().lock()
        && !r.iter().any(|s| s == value)
    {
        r.push(value.to_string());
    }
}

/// Replaces every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    redact_cow(text).into_owned()
}

/// [`redact`] without a copy of a text that holds no secret (almost every text).
pub fn redact_cow(text: &str) -> Cow<'_, str> {
    let Ok(r) = registry().lock() else {
        return Cow::Borrowed(text);
    };
    let mut out = Cow::Borrowed(text);
    for s in r.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), "***"));
        }
    }
    out
}

/// The ends of registered secrets whose beginning `text` ends with: a text that starts
/// with one of them would complete a secret if written after `text`. Why: the flow log
/// writes a prefix shared by many keys once and the keys' rest after it, each redacted on
/// its own; a secret split across the two would escape [`redact`], so a writer checks the
/// rests against these ends (almost always none) instead of redacting every joined key.
pub fn ends_completing(text: &str) -> Vec<String> {
    let Ok(r) = registry().lock() else {
        return Vec::new();
    };
    let mut ends = Vec::new();
    for s in r.iter() {
        for (k, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..k]) {
                ends.push(s[k..].to_string());
            }
        }
    }
    ends
}

/// A reference to a secret as written in a configuration file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SecretRef(
    /// `${env:NAME}` or `${file:/run/secrets/name}`. A literal value is rejected by
    /// `snodo lint`: secrets do not belong in files under version control.
    pub String,
);

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The reference itself is not secret, but a mistaken literal might be.
        if parse_reference(&self.0).is_some() {
            write!(f, "SecretRef({})", self.0)
        } else {
            f.write_str("SecretRef(***)")
        }
    }
}

/// A resolved secret. `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that needs it (a driver's connect call).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretSource<'a> {
    /// An environment variable.
    Env(&'a str),
    /// A file whose content (trimmed of the final newline) is the secret.
    File(&'a str),
}

/// Parses `${env:NAME}` / `${file:PATH}`; `None` for anything else.
pub fn parse_reference(s: &str) -> Option<SecretSource<'_>> {
    let inner = s.trim().strip_prefix("${")?.strip_suffix('}')?;
    if let Some(name) = inner.strip_prefix("env:") {
        let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return ok.then_some(SecretSource::Env(name));
    }
    if let Some(path) = inner.strip_prefix("file:") {
        return (!path.is_empty()).then_some(SecretSource::File(path));
    }
    None
}

impl SecretRef {
    /// Resolves the reference and registers the value for redaction. The error names the
    /// variable or file, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match parse_reference(&self.0) {
            Some(SecretSource::Env(name)) => std::env::var(name).map_err(|_| {
                format!("environment variable `{name}` is not set; export it before running snodo")
            })?,
            Some(SecretSource::File(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file `{path}`: {e}"))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => {
                return Err(
                    "a secret must be written as `${env:NAME}` or `${file:/path}`, not as a literal value"
                        .into(),
                );
            }
        };
        register(&value);
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_literals_do_not() {
        assert_eq!(
            parse_reference("${env:PG_PASSWORD}"),
            Some(SecretSource::Env("PG_PASSWORD"))
        );
        assert_eq!(
            parse_reference("${file:/run/secrets/x}"),
            Some(SecretSource::File("/run/secrets/x"))
        );
        assert_eq!(parse_reference("hunter2"), None);
        assert_eq!(parse_reference("${env:}"), None);
        let e = SecretRef("hunter2-literal".into()).resolve().unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            format!("{:?}", SecretRef("hunter2-literal".into())),
            "SecretRef(***)"
        );
    }

    #[test]
    fn resolved_secrets_are_redacted_from_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "S3cr3t-Value-xyz\n").unwrap();
        let s = SecretRef(format!("${{file:{}}}", p.display()))
            .resolve()
            .unwrap();
        assert_eq!(s.expose(), "S3cr3t-Value-xyz");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(
            redact("password=S3cr3t-Value-xyz failed"),
            "password=*** failed"
        );
    }
}
