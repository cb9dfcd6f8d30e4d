//! Text encodings of legacy files.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The character encoding of a text file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Encoding {
    /// UTF-8, with or without a byte-order mark.
    #[default]
    #[serde(rename = "utf-8", alias = "utf8", alias = "UTF-8")]
    Utf8,
    /// Windows-1252 (what SQL Server tools and Excel on Windows write in Italy): like
    /// ISO-8859-1 plus `€`, `’`, `“`, `”` and a few more in 0x80–0x9F.
    #[serde(rename = "windows-1252", alias = "cp1252", alias = "WINDOWS-1252")]
    Windows1252,
    /// ISO-8859-1 (Latin-1): every byte is the Unicode code point of the same value.
    #[serde(rename = "iso-8859-1", alias = "latin1", alias = "ISO-8859-1")]
    Iso88591,
}

impl Encoding {
    /// Decodes one field, borrowing it when it is already valid text (ASCII, or UTF-8 in a
    /// UTF-8 file): most fields are, and a typed field (a date, an amount) is parsed from the
    /// borrowed text without ever being copied. Only UTF-8 can fail: every byte means
    /// something in the other two.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, str>, usize> {
        match self {
            Encoding::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| e.valid_up_to()),
            // Most fields of an export are ASCII, which is the same text in every one of
            // these encodings (and valid UTF-8, so this never fails): std's checks are
            // word-at-a-time, cheaper than the decoder's set-up per field.
            Encoding::Windows1252 | Encoding::Iso88591 if bytes.is_ascii() => {
                std::str::from_utf8(bytes)
                    .map(Cow::Borrowed)
                    .map_err(|e| e.valid_up_to())
            }
            Encoding::Windows1252 => Ok(encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0),
            // encoding_rs maps the label ISO-8859-1 to windows-1252, as browsers do; files
            // that really are Latin-1 need the plain byte → code point mapping.
            Encoding::Iso88591 => Ok(Cow::Owned(bytes.iter().map(|&b| b as char).collect())),
        }
    }

    /// The bytes as they are, when they are already text in this encoding's reading:
    /// ASCII, or valid UTF-8 in a UTF-8 file. `None` when they need decoding (or are not
    /// valid UTF-8), which [`Encoding::decode`] then does or reports.
    pub fn as_text<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        match self {
            Encoding::Utf8 => std::str::from_utf8(bytes).ok(),
            Encoding::Windows1252 | Encoding::Iso88591 if bytes.is_ascii() => {
                std::str::from_utf8(bytes).ok()
            }
            Encoding::Windows1252 | Encoding::Iso88591 => None,
        }
    }

    /// Encodes text; `Err(char)` names the first character the encoding cannot represent.
    pub fn encode(&self, text: &str, out: &mut Vec<u8>) -> Result<(), char> {
        match self {
            Encoding::Utf8 => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
            Encoding::Windows1252 => {
                if text.is_ascii() {
                    out.extend_from_slice(text.as_bytes());
                    return Ok(());
                }
                for c in text.chars() {
                    let mut buf = [0u8; 4];
                    let s = c.encode_utf8(&mut buf);
                    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(s);
                    if unmappable {
                        return Err(c);
                    }
                    out.extend_from_slice(&bytes);
                }
                Ok(())
            }
            Encoding::Iso88591 => {
                for c in text.chars() {
                    let cp = c as u32;
                    if cp > 0xFF {
                        return Err(c);
                    }
                    out.push(cp as u8);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_as_it_is_only_when_no_decoding_is_needed() {
        // `C3 A8` is `è` in UTF-8 but `Ã¨` in the single-byte encodings: never taken as is.
        let bytes = b"PERCH\xc3\xa8";
        assert_eq!(Encoding::Utf8.as_text(bytes), Some("PERCHè"));
        for e in [Encoding::Windows1252, Encoding::Iso88591] {
            assert_eq!(e.as_text(bytes), None);
            assert_eq!(e.decode(bytes).unwrap(), "PERCHÃ¨");
            assert_eq!(e.as_text(b"ROSSI;1"), Some("ROSSI;1"));
        }
        assert_eq!(Encoding::Utf8.as_text(b"NICOL\xd2"), None);
    }

    #[test]
    fn windows_1252_specials_round_trip() {
        let bytes = [0x80u8, b' ', 0x92, b' ', 0xE0, 0xE8];
        let s = Encoding::Windows1252.decode(&bytes).unwrap();
        assert_eq!(s, "€ ’ àè");
        let mut out = Vec::new();
        Encoding::Windows1252.encode(&s, &mut out).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(Encoding::Iso88591.decode(&[0xE0]).unwrap(), "à");
        assert_eq!(Encoding::Iso88591.encode("€", &mut Vec::new()), Err('€'));
        assert_eq!(Encoding::Utf8.decode(&[b'a', 0xE0, b'b']), Err(1));
    }
}
