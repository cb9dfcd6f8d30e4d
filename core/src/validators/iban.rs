//! IBAN validation (ISO 13616), with the extra structure checks of Italian and San Marino IBANs.
//!
//! Social services pay benefits by bank transfer, so a mistyped IBAN means a payment that bounces
//! weeks later: catching it at intake is worth the strictness.

use thiserror::Error;

use super::codice_fiscale;

/// Why an IBAN was rejected.
///
/// Positions are 1-based in the electronic form (spaces removed), the form shown on bank
/// statements when grouped in fours. Messages never repeat the IBAN itself, since it identifies
/// a person's account.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IbanError {
    /// Nothing but whitespace.
    #[error("IBAN is empty")]
    Empty,
    /// A character not allowed at that position.
    #[error("IBAN: character at position {position} is not allowed there (expected {expected})")]
    Charset {
        /// 1-based position in the IBAN without spaces.
        position: usize,
        /// What was expected there, in words.
        expected: &'static str,
    },
    /// The country code is not in the IBAN registry table known to this module.
    #[error("IBAN: country code {country} does not use IBANs (or is not supported)")]
    Country {
        /// The two-letter country code found.
        country: String,
    },
    /// Wrong length for the country.
    #[error("IBAN: a {country} IBAN has {expected} characters, found {found}")]
    Length {
        /// The two-letter country code.
        country: String,
        /// Length required for that country.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// The check digits are out of range or the mod-97 check fails.
    #[error("IBAN: check digits do not match (mod-97 check failed)")]
    CheckDigits,
    /// The Italian/San Marino national check character (CIN) does not match the bank
    /// coordinates.
    #[error("IBAN: national check character (CIN) should be '{expected}', found '{found}'")]
    Cin {
        /// CIN computed from ABI, CAB and account number.
        expected: char,
        /// CIN as given.
        found: char,
    },
}

/// IBAN lengths per country, from the SWIFT IBAN registry.
///
/// French overseas departments and territories, the Åland Islands and the Crown Dependencies use
/// the FR, FI and GB prefixes, so they need no entry of their own.
const LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// The IBAN length required for a country code (uppercase, e.g. `"IT"`), if it uses IBANs.
pub fn expected_length(country: &str) -> Option<usize> {
    // The table is in alphabetical order (a test checks it): one IBAN field per record of
    // a registry export asks this.
    // Codes compared as two bytes, not as text (a call to compare memory per probe).
    let pair = |code: &str| -> Option<[u8; 2]> { code.as_bytes().try_into().ok() };
    let wanted = pair(country)?;
    LENGTHS
        .binary_search_by(|(code, _)| pair(code).cmp(&Some(wanted)))
        .ok()
        .map(|i| LENGTHS[i].1)
}

/// Removes all whitespace and uppercases: the electronic format to store and compare.
pub fn normalize(iban: &str) -> String {
    iban.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Remainder modulo 97 of the IBAN rearranged as ISO 7064 requires (first four characters moved
/// to the end, letters as 10–35), folded digit by digit so that no big integers are needed.
/// `iban` must be uppercase ASCII alphanumeric.
///
/// The remainder is taken every eight characters rather than at each one (a division per
/// character was most of the cost of checking a registry's IBANs): below 97 after a
/// reduction, it stays under 97 × 100⁸ < 2⁶⁴ through eight more characters of up to two
/// digits each, and reducing later gives the same remainder.
fn mod97(iban: &[u8]) -> u32 {
    let (head, tail) = iban.split_at(iban.len().min(4));
    let mut rem: u64 = 0;
    for (i, &b) in tail.iter().chain(head).enumerate() {
        rem = match b {
            b'0'..=b'9' => rem * 10 + u64::from(b - b'0'),
            // Letters expand to two digits (A = 10 … Z = 35).
            _ => rem * 100 + u64::from(b.saturating_sub(b'A')) + 10,
        };
        if i % 8 == 7 {
            rem %= 97;
        }
    }
    (rem % 97) as u32
}

/// Validates an IBAN: charset, country length, check digits (mod 97), and for Italy and San
/// Marino the national layout (CIN letter, 5-digit ABI and CAB, CIN check character).
///
/// Spaces anywhere and lowercase letters are accepted, as IBANs are usually copied in groups of
/// four from paper.
pub fn validate(iban: &str) -> Result<(), IbanError> {
    // Stored IBANs are usually already in electronic form: no copy for them.
    let iban: std::borrow::Cow<str> = if iban
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        std::borrow::Cow::Borrowed(iban)
    } else {
        std::borrow::Cow::Owned(normalize(iban))
    };
    if iban.is_empty() {
        return Err(IbanError::Empty);
    }
    // Checked on the bytes first; only a text that fails is walked by character, for the
    // position to report (a non-ASCII byte always fails here).
    let fits = |i: usize, b: u8| match i {
        0 | 1 => b.is_ascii_uppercase(),
        2 | 3 => b.is_ascii_digit(),
        _ => b.is_ascii_uppercase() || b.is_ascii_digit(),
    };
    if !iban.bytes().enumerate().all(|(i, b)| fits(i, b)) {
        for (i, c) in iban.chars().enumerate() {
            let (ok, expected) = match i {
                0 | 1 => (c.is_ascii_uppercase(), "a country letter"),
                2 | 3 => (c.is_ascii_digit(), "a check digit"),
                _ => (
                    c.is_ascii_uppercase() || c.is_ascii_digit(),
                    "a letter or digit",
                ),
            };
            if !ok {
                return Err(IbanError::Charset {
                    position: i + 1,
                    expected,
                });
            }
        }
    }
    // Everything is ASCII from here on, so byte indexing matches character positions.
    let bytes = iban.as_bytes();
    let country = iban.get(..2).unwrap_or_default();
    let Some(expected) = expected_length(country) else {
        return Err(IbanError::Country {
            country: country.to_owned(),
        });
    };
    if bytes.len() != expected {
        return Err(IbanError::Length {
            country: country.to_owned(),
            expected,
            found: bytes.len(),
        });
    }
    if country == "IT" || country == "SM" {
        check_italian_layout(bytes)?;
    }
    // ISO 13616 only issues check digits 02–98; 00, 01 and 99 can still satisfy mod 97 (they
    // are congruent to valid values), so they are rejected explicitly.
    let check = iban
        .get(2..4)
        .and_then(|s| s.parse::<u8>().ok())
        .unwrap_or(0);
    if !(2..=98).contains(&check) || mod97(bytes) != 1 {
        return Err(IbanError::CheckDigits);
    }
    if country == "IT" || country == "SM" {
        check_cin(bytes)?;
    }
    Ok(())
}

/// Italian and San Marino BBAN: CIN (1 letter), ABI (5 digits), CAB (5 digits), account number
/// (12 letters or digits). `bytes` is a full 27-character IBAN.
fn check_italian_layout(bytes: &[u8]) -> Result<(), IbanError> {
    if !bytes.get(4).is_some_and(u8::is_ascii_uppercase) {
        return Err(IbanError::Charset {
            position: 5,
            expected: "the CIN letter",
        });
    }
    for (i, b) in bytes.iter().enumerate().take(15).skip(5) {
        if !b.is_ascii_digit() {
            return Err(IbanError::Charset {
                position: i + 1,
                expected: if i < 10 {
                    "an ABI digit"
                } else {
                    "a CAB digit"
                },
            });
        }
    }
    Ok(())
}

/// The CIN is computed over ABI + CAB + account number with the same odd/even tables as the
/// codice fiscale check character. It is checked after mod 97 because a mod-97 failure is the
/// more general diagnosis; a CIN mismatch with a correct mod 97 means check digits were
/// computed over wrong bank coordinates.
fn check_cin(bytes: &[u8]) -> Result<(), IbanError> {
    let (Some(&found), Some(bban)) = (bytes.get(4), bytes.get(5..)) else {
        return Ok(());
    };
    match codice_fiscale::odd_even_check_letter(bban) {
        Some(expected) if expected != char::from(found) => Err(IbanError::Cin {
            expected,
            found: char::from(found),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deferred reduction gives the remainder of the reduction at every character, on
    /// strings of every IBAN length, all letters (the largest values) and all digits.
    #[test]
    fn mod97_reduces_late_to_the_same_remainder() {
        fn every_step(iban: &[u8]) -> u32 {
            let (head, tail) = iban.split_at(iban.len().min(4));
            tail.iter().chain(head).fold(0, |rem, &b| match b {
                b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
                _ => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            })
        }
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut seed = 7u64;
        for len in 1..=34 {
            for round in 0..50 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        match round {
                            0 => b'Z',
                            1 => b'9',
                            _ => alphabet[(seed >> 33) as usize % alphabet.len()],
                        }
                    })
                    .collect();
                assert_eq!(mod97(&s), every_step(&s), "{}", String::from_utf8_lossy(&s));
            }
        }
    }

    #[test]
    fn the_length_table_is_in_order_for_the_binary_search() {
        assert!(LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        for (code, len) in LENGTHS {
            assert_eq!(expected_length(code), Some(*len), "{code}");
        }
        assert_eq!(expected_length("ZZ"), None);
        assert_eq!(expected_length("A"), None);
    }

    #[test]
    fn valid_ibans() {
        for iban in [
            "IT60X0542811101000000123456",
            "DE89370400440532013000",
            "SM86U0322509800000000270100",
            "GB29NWBK60161331926819",
            "FR1420041010050500013M02606",
            "ES9121000418450200051332",
            "NL91ABNA0417164300",
            "NO9386011117947",
            "MT84MALT011000012345MTLCAST001S",
            "IT49T0623049841000043964722",
            "IT73C0306930210100000016183",
        ] {
            assert_eq!(validate(iban), Ok(()), "{iban}");
        }
    }

    #[test]
    fn accepts_spaces_and_lowercase() {
        assert_eq!(validate(" it60 x054 2811 1010 0000 0123 456 "), Ok(()));
        assert_eq!(validate("DE89 3704 0044 0532 0130 00"), Ok(()));
    }

    #[test]
    fn wrong_check_digits() {
        assert_eq!(
            validate("IT61X0542811101000000123456"),
            Err(IbanError::CheckDigits)
        );
        assert_eq!(
            validate("DE88370400440532013000"),
            Err(IbanError::CheckDigits)
        );
        // A transposition in the account number.
        assert_eq!(
            validate("IT60X0542811101000000123465"),
            Err(IbanError::CheckDigits)
        );
    }

    #[test]
    fn check_digits_out_of_range_rejected_even_if_congruent() {
        // 98 and 01 differ by 97: same remainder, but 01 is never issued.
        let mut iban = String::from("GB98NWBK60161331926819");
        let rem98 = mod97(iban.as_bytes());
        iban.replace_range(2..4, "01");
        assert_eq!(mod97(iban.as_bytes()), rem98);
        assert_eq!(validate(&iban), Err(IbanError::CheckDigits));
    }

    #[test]
    fn country_and_length() {
        assert_eq!(
            validate("XX60X0542811101000000123456"),
            Err(IbanError::Country {
                country: "XX".into()
            })
        );
        assert_eq!(
            validate("IT60X054281110100000012345"),
            Err(IbanError::Length {
                country: "IT".into(),
                expected: 27,
                found: 26
            })
        );
        assert_eq!(expected_length("IT"), Some(27));
        assert_eq!(expected_length("SM"), Some(27));
        assert_eq!(expected_length("DE"), Some(22));
        assert_eq!(expected_length("FR"), Some(27));
        assert_eq!(expected_length("ES"), Some(24));
        assert_eq!(expected_length("US"), None);
    }

    #[test]
    fn charset_errors() {
        assert_eq!(validate("   "), Err(IbanError::Empty));
        assert_eq!(
            validate("1T60X0542811101000000123456"),
            Err(IbanError::Charset {
                position: 1,
                expected: "a country letter"
            })
        );
        assert_eq!(
            validate("ITX0"),
            Err(IbanError::Charset {
                position: 3,
                expected: "a check digit"
            })
        );
        assert!(matches!(
            validate("IT60X05428111010000001234-6"),
            Err(IbanError::Charset { position: 26, .. })
        ));
        assert!(validate("IT60X054281110100000012345é").is_err());
        assert!(validate("I").is_err());
        assert!(validate("IT").is_err());
        assert!(validate("IT6").is_err());
    }

    #[test]
    fn italian_layout() {
        // CIN must be a letter.
        assert_eq!(
            validate("IT6010542811101000000123456"),
            Err(IbanError::Charset {
                position: 5,
                expected: "the CIN letter"
            })
        );
        // ABI and CAB must be digits.
        assert_eq!(
            validate("IT60X05A2811101000000123456"),
            Err(IbanError::Charset {
                position: 8,
                expected: "an ABI digit"
            })
        );
        assert_eq!(
            validate("IT60X0542811B01000000123456"),
            Err(IbanError::Charset {
                position: 13,
                expected: "a CAB digit"
            })
        );
    }

    #[test]
    fn wrong_cin_with_consistent_check_digits() {
        // CIN changed from X to Y and the IBAN check digits recomputed, so only the CIN is wrong.
        let body = "Y0542811101000000123456";
        let probe = format!("IT00{body}");
        let check = 98 - mod97(probe.as_bytes());
        let iban = format!("IT{check:02}{body}");
        assert_eq!(
            validate(&iban),
            Err(IbanError::Cin {
                expected: 'X',
                found: 'Y'
            })
        );
    }

    #[test]
    fn errors_do_not_echo_the_iban() {
        for bad in [
            "IT61X0542811101000000123456",
            "IT60X05A2811101000000123456",
            "IT60X054281110100000012345",
        ] {
            let msg = validate(bad).unwrap_err().to_string();
            assert!(!msg.contains(bad), "{msg}");
            assert!(!msg.contains("0542811101"), "{msg}");
        }
    }
}
