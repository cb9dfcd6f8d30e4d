//! Partita IVA (Italian VAT number) validation.
//!
//! The same 11-digit layout and check digit are used by the numeric codice fiscale of companies
//! and bodies, so [`check_digit`] is shared with [`super::codice_fiscale`].

use thiserror::Error;

/// Why a partita IVA was rejected.
///
/// Positions are 1-based and count the 11 digits only, after removing spaces and the optional
/// `IT` prefix, because that is the form operators compare against documents.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PivaError {
    /// Nothing left after removing spaces and the `IT` prefix.
    #[error("partita IVA is empty")]
    Empty,
    /// Not 11 characters long.
    #[error("partita IVA must have 11 digits, found {found} characters")]
    Length {
        /// Number of characters found.
        found: usize,
    },
    /// A character that is not a digit.
    #[error("partita IVA: character {found:?} at position {position} is not a digit")]
    Charset {
        /// 1-based position of the offending character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The last digit does not match the check digit computed from the first ten.
    #[error("partita IVA: check digit should be '{expected}', found '{found}'")]
    CheckDigit {
        /// Check digit computed from digits 1–10.
        expected: char,
        /// Digit 11 as given.
        found: char,
    },
    /// Digits 8–10 are not the code of a provincial tax office.
    #[error(
        "partita IVA: office code {found:03} is not assigned \
         (expected 001-100, 120, 121, 888 or 999)"
    )]
    OfficeCode {
        /// The three-digit office code found.
        found: u16,
    },
}

/// Removes all whitespace, uppercases and drops a leading `IT` country prefix.
///
/// Partite IVA arrive both in the domestic form and in the EU VAT form (`IT` + 11 digits), often
/// grouped with spaces; validation and storage need one canonical form.
pub fn normalize(piva: &str) -> String {
    let compact: String = piva
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    match compact.strip_prefix("IT") {
        Some(rest) => rest.to_owned(),
        None => compact,
    }
}

/// Computes the check digit (Luhn variant) of the first ten digits.
///
/// Returns `None` unless `first10` is exactly ten ASCII digits, so that callers never get a
/// digit computed from garbage.
pub fn check_digit(first10: &str) -> Option<char> {
    let bytes = first10.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let digit = u32::from(b - b'0');
            // Odd positions (1-based) count as they are; even ones are doubled and reduced to a
            // single digit, which is what catches transpositions of adjacent digits.
            if i % 2 == 0 {
                digit
            } else if digit * 2 > 9 {
                digit * 2 - 9
            } else {
                digit * 2
            }
        })
        .sum();
    char::from_digit((10 - sum % 10) % 10, 10)
}

/// Whether `code` (digits 8–10) is a tax-office code that can appear in a partita IVA.
///
/// 001–100 are the provincial offices, 120/121 were added for the newer provinces, 888 and 999
/// are reserved for special assignments (e.g. non-resident subjects).
pub fn is_valid_office_code(code: u16) -> bool {
    matches!(code, 1..=100 | 120 | 121 | 888 | 999)
}

/// Validates a partita IVA: 11 digits, correct check digit, assigned office code.
///
/// Accepts surrounding and inner spaces and an optional `IT` prefix (see [`normalize`]). The
/// check digit is verified before the office code, because a wrong check digit is the likelier
/// typing error and the more useful message.
pub fn validate(piva: &str) -> Result<(), PivaError> {
    let piva = normalize(piva);
    if piva.is_empty() {
        return Err(PivaError::Empty);
    }
    let found = piva.chars().count();
    if found != 11 {
        return Err(PivaError::Length { found });
    }
    if let Some((i, c)) = piva.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(PivaError::Charset {
            position: i + 1,
            found: c,
        });
    }
    // All 11 characters are ASCII digits from here on, so byte slicing is safe.
    let (body, last) = piva.split_at(10);
    let expected = check_digit(body).ok_or(PivaError::Length { found })?;
    let found_digit = last.chars().next().ok_or(PivaError::Length { found })?;
    if expected != found_digit {
        return Err(PivaError::CheckDigit {
            expected,
            found: found_digit,
        });
    }
    let office = piva
        .get(7..10)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(PivaError::Length { found })?;
    if !is_valid_office_code(office) {
        return Err(PivaError::OfficeCode { found: office });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_partite_iva_are_valid() {
        for piva in ["02780790107", "05979361218", "00488410010"] {
            assert_eq!(validate(piva), Ok(()), "{piva}");
        }
    }

    #[test]
    fn accepts_it_prefix_spaces_and_lowercase() {
        assert_eq!(validate("IT02780790107"), Ok(()));
        assert_eq!(validate(" it 027 8079 0107 "), Ok(()));
    }

    #[test]
    fn sdi_sample_fails_check_digit() {
        assert_eq!(
            validate("01234567890"),
            Err(PivaError::CheckDigit {
                expected: '7',
                found: '0'
            })
        );
    }

    #[test]
    fn check_digit_matches_reference_values() {
        assert_eq!(check_digit("0278079010"), Some('7'));
        assert_eq!(check_digit("0597936121"), Some('8'));
        assert_eq!(check_digit("0048841001"), Some('0'));
        assert_eq!(check_digit("123"), None);
        assert_eq!(check_digit("02780790A0"), None);
        assert_eq!(check_digit("０２７８０７９０１０"), None);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(validate("   "), Err(PivaError::Empty));
        assert_eq!(validate("IT"), Err(PivaError::Empty));
        assert_eq!(validate("0278079010"), Err(PivaError::Length { found: 10 }));
        assert_eq!(
            validate("0278079O107"),
            Err(PivaError::Charset {
                position: 8,
                found: 'O'
            })
        );
        // Multi-byte input must not cause slicing panics.
        assert!(validate("0278079010é").is_err());
        assert!(validate("ééééééééééé").is_err());
    }

    #[test]
    fn rejects_unassigned_office_code() {
        // Office code 000: the all-zero number passes the Luhn check but is not assigned.
        assert_eq!(
            validate("00000000000"),
            Err(PivaError::OfficeCode { found: 0 })
        );
        // Office code 101 with a correct check digit.
        let body = "0000000101";
        let cd = check_digit(body).unwrap();
        assert_eq!(
            validate(&format!("{body}{cd}")),
            Err(PivaError::OfficeCode { found: 101 })
        );
        for code in [1, 100, 120, 121, 888, 999] {
            assert!(is_valid_office_code(code), "{code}");
        }
        for code in [0, 101, 119, 122, 887, 998] {
            assert!(!is_valid_office_code(code), "{code}");
        }
    }
}
