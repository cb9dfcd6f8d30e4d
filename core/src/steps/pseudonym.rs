use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Step, StepContext, config_error};
use crate::config::pipeline::PseudonymConfig;
use crate::error::Result;
use crate::record::{Batch, OutputField, Record};
use crate::secret::Secret;
use crate::value::Value;

/// The `pseudonym` step: a stable pseudonym for an identifier, computed as
/// HMAC-SHA-256(key, identifier) and written in base32. The key is a secret of the
/// connections file (`keys:`), so the same person gets the same pseudonym in every run and
/// every year, and nobody without the key can recompute it from a codice fiscale — the
/// property INPS asks of SINBA's `IDBeneficiario`. A plain hash would not do: codici
/// fiscali are few enough to be enumerated.
pub struct Pseudonym {
    label: String,
    field: String,
    into: OutputField,
    length: usize,
    key: Secret,
}

impl Pseudonym {
    /// Builds the step; the key must be defined in the connections file.
    pub fn new(label: String, cfg: &PseudonymConfig, ctx: &StepContext) -> Result<Self> {
        let key = ctx.keys.get(&cfg.key).cloned().ok_or_else(|| {
            config_error(
                &label,
                format!(
                    "key `{}` is not defined under `keys:` in the connections file (defined: {})",
                    cfg.key,
                    if ctx.keys.is_empty() {
                        "none".to_string()
                    } else {
                        ctx.keys.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            )
        })?;
        if key.expose().len() < 16 {
            return Err(config_error(
                &label,
                format!(
                    "key `{}` is shorter than 16 characters: too weak for pseudonyms",
                    cfg.key
                ),
            ));
        }
        Ok(Pseudonym {
            label,
            field: cfg.field.clone(),
            into: OutputField::new(cfg.into.clone()),
            length: cfg.length,
            key,
        })
    }

    /// The pseudonym of `id` (trimmed and upper-cased first: `rssmra…` and `RSSMRA…` are
    /// the same codice fiscale).
    pub fn pseudonym(&self, id: &str) -> String {
        compute(self.key.expose(), id, self.length)
    }
}

/// HMAC-SHA-256 of the normalised identifier, base32 (RFC 4648, no padding), cut to
/// `length` characters (5 bits each).
pub fn compute(key: &str, id: &str, length: usize) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.trim().to_uppercase().as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = data_encoding::BASE32_NOPAD.encode(&digest);
    out.truncate(length);
    out
}

impl Step for Pseudonym {
    fn label(&self) -> &str {
        &self.label
    }

    fn adds(&self) -> usize {
        1
    }

    fn apply(&mut self, records: Vec<Record>, _batch: &mut Batch) -> Vec<Record> {
        records
            .into_iter()
            .map(|mut rec| {
                let value = match rec.get(&self.field).and_then(Value::to_text) {
                    Some(id) if !id.trim().is_empty() => Value::Str(self.pseudonym(&id).into()),
                    _ => Value::Null,
                };
                self.into.set(&mut rec, value);
                rec
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_fit_sinba() {
        let a = compute("a-long-enough-secret-key", "RSSMRA85T10A562S", 20);
        assert_eq!(
            a,
            compute("a-long-enough-secret-key", " rssmra85t10a562s ", 20)
        );
        assert_ne!(
            a,
            compute("another-long-secret-key!", "RSSMRA85T10A562S", 20)
        );
        assert_ne!(
            a,
            compute("a-long-enough-secret-key", "VRDLGU80A01D969K", 20)
        );
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert!(!a.contains("RSSMRA"));
    }
}
