//! Codice fiscale validation and decoding (DM 23/12/1976, DPR 605/1973).
//!
//! A personal codice fiscale is personal data: no error produced here contains the code, only
//! positions and single characters, because these errors are logged and shown in flow reports.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use thiserror::Error;

use super::comuni::{self, PlaceCheck};
use super::partita_iva;

/// Decoded data of a valid personal codice fiscale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfInfo {
    /// Date of birth, with the century resolved against the reference date. Always `Some` for
    /// codes accepted by this module; optional so that records built from other sources can
    /// carry an unknown date in the same type.
    pub birth_date: Option<NaiveDate>,
    /// Whether the day field was encoded with +40, which the decree reserves for women.
    pub female: bool,
    /// Belfiore code of the birthplace after de-omocodia, e.g. `D969` or `Z200`.
    pub birthplace: String,
    /// Whether any digit was replaced by a letter to resolve a collision between two people.
    pub omocodia: bool,
}

/// What kind of codice fiscale was recognised by [`validate_any`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CfKind {
    /// 16-character code of a natural person.
    Person(CfInfo),
    /// 11-digit code of a company or body (same check digit as the partita IVA).
    Numeric,
}

/// Why the birthplace encoded in a codice fiscale was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthplaceReason {
    /// No comune or foreign state ever had the code.
    Unknown,
    /// The code exists but was not in force on the birth date; the nearest validity window is
    /// given so that an operator can tell a wrong code from a wrong date.
    NotValidAtBirth {
        /// Start of the nearest validity period.
        valid_from: NaiveDate,
        /// End of the nearest validity period (inclusive).
        valid_to: NaiveDate,
    },
}

impl fmt::Display for BirthplaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("is not a known comune or foreign state"),
            Self::NotValidAtBirth {
                valid_from,
                valid_to,
            } => write!(
                f,
                "was not in force on the birth date (nearest validity {valid_from} to {valid_to})"
            ),
        }
    }
}

/// Why a codice fiscale was rejected.
///
/// Positions are 1-based and refer to the code after trimming surrounding spaces.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CfError {
    /// Nothing but whitespace.
    #[error("codice fiscale is empty")]
    Empty,
    /// Not 16 characters (or 11 digits, where numeric codes are accepted).
    #[error(
        "codice fiscale must have 16 characters (11 digits for companies and bodies), \
         found {found}"
    )]
    Length {
        /// Number of characters found.
        found: usize,
    },
    /// A character of the wrong class for its position.
    #[error(
        "codice fiscale: character at position {position} is not allowed there (expected {expected})"
    )]
    Charset {
        /// 1-based position.
        position: usize,
        /// What the position requires, in words.
        expected: &'static str,
    },
    /// Position 9 is a letter but not one of the twelve month letters.
    #[error(
        "codice fiscale: '{found}' at position 9 is not a month letter \
         (A B C D E H L M P R S T)"
    )]
    Month {
        /// The letter found.
        found: char,
    },
    /// Day field outside 01–31 (men) and 41–71 (women).
    #[error(
        "codice fiscale: day {found} at positions 10-11 is out of range \
         (01-31, or 41-71 for women)"
    )]
    Day {
        /// The two-digit day value found (after de-omocodia).
        found: u32,
    },
    /// Day and month form no calendar date in the birth year (e.g. 31 February).
    #[error("codice fiscale: day {day} does not exist in month {month} of the birth year")]
    Date {
        /// Month number (1–12).
        month: u32,
        /// Day of month (1–31, already without the +40).
        day: u32,
    },
    /// The control character does not match the rest of the code.
    #[error("codice fiscale: check character should be '{expected}', found '{found}'")]
    CheckChar {
        /// Character computed from the rest of the code.
        expected: char,
        /// Last character as given.
        found: char,
    },
    /// The birthplace code is unknown or was not in force on the birth date.
    #[error("codice fiscale: birthplace code {code} {reason}")]
    Birthplace {
        /// Belfiore code after de-omocodia; a place code alone does not identify a person.
        code: String,
        /// What is wrong with it.
        reason: BirthplaceReason,
    },
}

/// Values of characters at odd (1-based) positions; digits share the value of the letter with
/// the same index (0/A, 1/B, … 9/J).
const ODD: [u32; 26] = [
    1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23,
];

/// Month letters in calendar order: the decree skips letters easily confused when handwritten.
const MONTHS: [u8; 12] = *b"ABCDEHLMPRST";

/// Letters replacing digits 0–9 under omocodia.
const OMOCODIA: [u8; 10] = *b"LMNPQRSTUV";

/// 0-based indexes of the characters that omocodia may turn into letters (date and place
/// digits).
const OMOCODIA_SLOTS: [usize; 7] = [6, 7, 9, 10, 12, 13, 14];

/// Trims surrounding whitespace and uppercases.
///
/// ASCII-only uppercasing keeps character positions identical to the trimmed input, so error
/// positions point at what the user typed; non-ASCII letters are invalid anyway.
///
/// A code already trimmed and in capitals (what stores and exports hold) is borrowed: this
/// runs for every record of a load that checks codici fiscali.
pub fn normalize(cf: &str) -> std::borrow::Cow<'_, str> {
    crate::value::trim_ascii_upper(cf)
}

/// Check letter over `chars` with the codice fiscale odd/even tables (odd 1-based positions use
/// [`ODD`], even ones the plain value), sum modulo 26.
///
/// Shared with the Italian IBAN CIN, which uses the same tables over ABI, CAB and account.
/// `None` if any byte is not an ASCII letter or digit.
pub(crate) fn odd_even_check_letter(chars: &[u8]) -> Option<char> {
    let mut sum = 0u32;
    for (i, &b) in chars.iter().enumerate() {
        let index = match b.to_ascii_uppercase() {
            d @ b'0'..=b'9' => d - b'0',
            l @ b'A'..=b'Z' => l - b'A',
            _ => return None,
        };
        let index = usize::from(index);
        sum += if i % 2 == 0 {
            ODD.get(index).copied()?
        } else {
            u32::try_from(index).ok()?
        };
    }
    u8::try_from(sum % 26).ok().map(|v| char::from(b'A' + v))
}

/// Computes the check character of a personal codice fiscale from its first 15 characters.
///
/// Accepts either case; returns `None` unless `first15` is exactly 15 ASCII letters or digits.
pub fn check_char(first15: &str) -> Option<char> {
    let bytes = first15.as_bytes();
    if bytes.len() != 15 {
        return None;
    }
    odd_even_check_letter(bytes)
}

/// Validates a personal (16-character) codice fiscale, resolving the birth century against
/// today's local date.
pub fn validate(cf: &str) -> Result<CfInfo, CfError> {
    validate_at(cf, today())
}

/// Validates a personal codice fiscale, resolving the two-digit birth year against `today`.
///
/// The year is placed in `today`'s century unless that would put the birth after `today`, in
/// which case it belongs to the previous century. People over 100 years old are therefore
/// dated a century late: the code carries no more information, so callers holding the real
/// birth date should compare it with [`CfInfo::birth_date`] modulo 100 years.
///
/// Input may have any case and surrounding spaces. Checks run from structure to meaning
/// (charset, month, day, calendar date) and the check character last, so that a mistyped
/// field is reported by name rather than as a generic check failure.
pub fn validate_at(cf: &str, today: NaiveDate) -> Result<CfInfo, CfError> {
    let cf = normalize(cf);
    if cf.is_empty() {
        return Err(CfError::Empty);
    }
    let found = cf.chars().count();
    if found != 16 {
        return Err(CfError::Length { found });
    }
    decode_person(cf.as_bytes(), today)
}

/// Like [`validate`], and also checks that the birthplace exists and was in force on the
/// birth date.
pub fn validate_with_birthplace(cf: &str) -> Result<CfInfo, CfError> {
    validate_with_birthplace_at(cf, today())
}

/// Like [`validate_at`], and also checks that the birthplace exists and was in force on the
/// birth date (comuni from the ANPR archive, `Zxxx` from the ANPR foreign states table).
///
/// The ANPR foreign states table lists current states only; the codes of states that no longer
/// exist (Yugoslavia, USSR, Czechoslovakia …) and of a few territories, still carried by the
/// codici fiscali of people born there, come from `mappings/comuni/stati_cessati.csv` with
/// their periods, so a person born in Belgrade in 1958 (`Z118`) is valid and one born there
/// in 2004 is not.
pub fn validate_with_birthplace_at(cf: &str, today: NaiveDate) -> Result<CfInfo, CfError> {
    let info = validate_at(cf, today)?;
    let reason = match info.birth_date {
        Some(date) => match comuni::lookup_at(&info.birthplace, date) {
            PlaceCheck::Valid(_) => None,
            PlaceCheck::NotValidAt {
                valid_from,
                valid_to,
                ..
            } => Some(BirthplaceReason::NotValidAtBirth {
                valid_from,
                valid_to,
            }),
            PlaceCheck::Unknown => Some(BirthplaceReason::Unknown),
        },
        None => (!comuni::exists(&info.birthplace)).then_some(BirthplaceReason::Unknown),
    };
    match reason {
        None => Ok(info),
        Some(reason) => Err(CfError::Birthplace {
            code: info.birthplace,
            reason,
        }),
    }
}

/// Validates either a personal codice fiscale (16 characters) or the numeric one of a company
/// or body (11 digits), resolving the birth century against today's local date.
pub fn validate_any(cf: &str) -> Result<CfKind, CfError> {
    validate_any_at(cf, today())
}

/// Like [`validate_any`] with an explicit reference date for the birth century.
///
/// Numeric codes get only the check digit test, not the partita IVA office-code range: codes
/// assigned to non-commercial bodies follow other numbering, and rejecting a genuine code is
/// worse here than accepting a rare wrong one that still passes the check digit.
pub fn validate_any_at(cf: &str, today: NaiveDate) -> Result<CfKind, CfError> {
    let cf = normalize(cf);
    if cf.is_empty() {
        return Err(CfError::Empty);
    }
    match cf.chars().count() {
        16 => decode_person(cf.as_bytes(), today).map(CfKind::Person),
        11 => {
            if let Some(i) = cf.chars().position(|c| !c.is_ascii_digit()) {
                return Err(CfError::Charset {
                    position: i + 1,
                    expected: "a digit",
                });
            }
            let (body, last) = cf.split_at(10);
            let expected =
                partita_iva::check_digit(body).ok_or(CfError::Length { found: cf.len() })?;
            let found = last
                .chars()
                .next()
                .ok_or(CfError::Length { found: cf.len() })?;
            if expected == found {
                Ok(CfKind::Numeric)
            } else {
                Err(CfError::CheckChar { expected, found })
            }
        }
        found => Err(CfError::Length { found }),
    }
}

fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

/// Character class required at each position, from the official pattern
/// `[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]`.
fn expected_class(index: usize) -> (&'static str, fn(u8) -> bool) {
    fn letter(b: u8) -> bool {
        b.is_ascii_uppercase()
    }
    fn digit_or_omocodia(b: u8) -> bool {
        b.is_ascii_digit() || OMOCODIA.contains(&b)
    }
    if OMOCODIA_SLOTS.contains(&index) {
        (
            "a digit or omocodia letter (L M N P Q R S T U V)",
            digit_or_omocodia,
        )
    } else {
        ("a letter", letter)
    }
}

/// Value of a date/place digit, undoing omocodia. Only called after the charset check.
fn digit_value(b: u8) -> u32 {
    if b.is_ascii_digit() {
        u32::from(b - b'0')
    } else {
        OMOCODIA
            .iter()
            .position(|&l| l == b)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0)
    }
}

/// `cf` is the normalised code, already known to be 16 characters long.
fn decode_person(cf: &[u8], today: NaiveDate) -> Result<CfInfo, CfError> {
    // A fixed-size array makes every index below checked at compile time.
    let Ok(cf) = <&[u8; 16]>::try_from(cf) else {
        // 16 characters but more bytes means some are non-ASCII: point at the first one.
        let position = String::from_utf8_lossy(cf)
            .chars()
            .position(|c| !c.is_ascii())
            .map_or(1, |p| p + 1);
        return Err(CfError::Charset {
            position,
            expected: expected_class(position - 1).0,
        });
    };
    for (i, &b) in cf.iter().enumerate() {
        let (expected, allowed) = expected_class(i);
        if !allowed(b) {
            return Err(CfError::Charset {
                position: i + 1,
                expected,
            });
        }
    }

    let month_letter = cf[8];
    let month = MONTHS
        .iter()
        .position(|&m| m == month_letter)
        .and_then(|p| u32::try_from(p + 1).ok())
        .ok_or(CfError::Month {
            found: char::from(month_letter),
        })?;

    let coded_day = digit_value(cf[9]) * 10 + digit_value(cf[10]);
    let (day, female) = match coded_day {
        1..=31 => (coded_day, false),
        41..=71 => (coded_day - 40, true),
        found => return Err(CfError::Day { found }),
    };

    let yy = digit_value(cf[6]) * 10 + digit_value(cf[7]);
    let birth_date = resolve_birth_date(yy, month, day, today)?;

    let (first15, _) = cf.split_at(15);
    let expected = odd_even_check_letter(first15).ok_or(CfError::Length { found: cf.len() })?;
    let found = char::from(cf[15]);
    if expected != found {
        return Err(CfError::CheckChar { expected, found });
    }

    let mut birthplace = String::with_capacity(4);
    birthplace.push(char::from(cf[11]));
    for b in [cf[12], cf[13], cf[14]] {
        birthplace.push(char::from_digit(digit_value(b), 10).unwrap_or('0'));
    }
    let omocodia = OMOCODIA_SLOTS
        .iter()
        .any(|&i| cf.get(i).is_some_and(|b| !b.is_ascii_digit()));

    Ok(CfInfo {
        birth_date: Some(birth_date),
        female,
        birthplace,
        omocodia,
    })
}

fn resolve_birth_date(
    yy: u32,
    month: u32,
    day: u32,
    today: NaiveDate,
) -> Result<NaiveDate, CfError> {
    let invalid = CfError::Date { month, day };
    let yy = i32::try_from(yy).map_err(|_| invalid.clone())?;
    let mut year = today.year().div_euclid(100) * 100 + yy;
    // Compare (month, day) too, not just the year: someone born later in the current year
    // than today cannot exist yet, so they belong to the previous century.
    if year > today.year() || (year == today.year() && (month, day) > (today.month(), today.day()))
    {
        year -= 100;
    }
    NaiveDate::from_ymd_opt(year, month, day).ok_or(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    /// Fixed reference date, so that century resolution does not depend on the wall clock.
    #[allow(non_snake_case)]
    fn TODAY() -> NaiveDate {
        d(2026, 6, 1)
    }

    #[test]
    fn real_codes_are_valid() {
        let info = validate_at("BNCMRA80A01D548T", TODAY()).unwrap();
        assert_eq!(
            info,
            CfInfo {
                birth_date: Some(d(1980, 1, 1)),
                female: false,
                birthplace: "D548".into(),
                omocodia: false,
            }
        );
        let info = validate_at("NREGCM80H30D612D", TODAY()).unwrap();
        assert_eq!(info.birth_date, Some(d(1980, 6, 30)));
        assert_eq!(info.birthplace, "D612");
        let info = validate_at("RSSMRA85T10A562S", TODAY()).unwrap();
        assert_eq!(info.birth_date, Some(d(1985, 12, 10)));
        assert!(!info.female);
        // The wall-clock variant agrees for adults.
        assert!(validate("RSSMRA85T10A562S").is_ok());
    }

    #[test]
    fn check_char_reference_values() {
        assert_eq!(check_char("BNCMRA80A01D548"), Some('T'));
        assert_eq!(check_char("NREGCM80H30D612"), Some('D'));
        assert_eq!(check_char("RSSMRA85T10A562"), Some('S'));
        assert_eq!(check_char("rssmra85t10a562"), Some('S'));
        assert_eq!(check_char("RSSMRA85T10A56"), None);
        assert_eq!(check_char("RSSMRA85T10A56-"), None);
        assert_eq!(check_char("RSSMRA85T10A5é"), None);
    }

    #[test]
    fn normalises_case_and_surrounding_spaces() {
        assert_eq!(normalize("  bncmra80a01d548t \n"), "BNCMRA80A01D548T");
        assert_eq!(normalize(" BNCMRA80A01D548T"), "BNCMRA80A01D548T");
        assert_eq!(normalize("BNCmRA80A01D548T"), "BNCMRA80A01D548T");
        assert!(validate_at("  bncmra80a01d548t ", TODAY()).is_ok());
    }

    #[test]
    fn omocodia_is_decoded() {
        // Last place digit 8 -> U; check character recomputed independently (Python) as Q.
        let info = validate_at("BNCMRA80A01D54UQ", TODAY()).unwrap();
        assert!(info.omocodia);
        assert_eq!(info.birthplace, "D548");
        assert_eq!(info.birth_date, Some(d(1980, 1, 1)));
        // Two substitutions (4 -> Q, 8 -> U); check character C.
        let info = validate_at("BNCMRA80A01D5QUC", TODAY()).unwrap();
        assert_eq!(info.birthplace, "D548");
        // Every omocodia slot substituted; check character I.
        let info = validate_at("BNCMRAULALMDRQUI", TODAY()).unwrap();
        assert!(info.omocodia);
        assert_eq!(info.birthplace, "D548");
        assert_eq!(info.birth_date, Some(d(1980, 1, 1)));
        assert!(!info.female);
    }

    #[test]
    fn female_day_plus_forty() {
        // RSSMRA85T10A562S with day 10 + 40; check character W computed independently.
        let info = validate_at("RSSMRA85T50A562W", TODAY()).unwrap();
        assert!(info.female);
        assert_eq!(info.birth_date, Some(d(1985, 12, 10)));
    }

    #[test]
    fn wrong_check_char_reports_expected() {
        assert_eq!(
            validate_at("BNCMRA80A01D548X", TODAY()),
            Err(CfError::CheckChar {
                expected: 'T',
                found: 'X'
            })
        );
    }

    #[test]
    fn invalid_month_letter() {
        // Z is not a month letter; check character B is otherwise correct.
        assert_eq!(
            validate_at("RSSMRA85Z10A562B", TODAY()),
            Err(CfError::Month { found: 'Z' })
        );
    }

    #[test]
    fn invalid_day_and_date() {
        assert_eq!(
            validate_at("RSSMRA85T35A562G", TODAY()),
            Err(CfError::Day { found: 35 })
        );
        assert_eq!(
            validate_at("RSSMRA85T00A562S", TODAY()),
            Err(CfError::Day { found: 0 })
        );
        assert_eq!(
            validate_at("RSSMRA85T72A562S", TODAY()),
            Err(CfError::Day { found: 72 })
        );
        // 31 February, correct check character F.
        assert_eq!(
            validate_at("RSSMRA85B31A562F", TODAY()),
            Err(CfError::Date { month: 2, day: 31 })
        );
    }

    #[test]
    fn leap_day_depends_on_resolved_century() {
        // 29 February of year 00: valid in 2000, invalid in 1900.
        let cf = "RSSMRA00B29A562C";
        assert_eq!(
            validate_at(cf, TODAY()).unwrap().birth_date,
            Some(d(2000, 2, 29))
        );
        assert_eq!(
            validate_at(cf, d(1999, 12, 31)),
            Err(CfError::Date { month: 2, day: 29 })
        );
    }

    #[test]
    fn century_resolution() {
        let cf = "RSSMRA25A01D969Q";
        assert_eq!(
            validate_at(cf, d(2026, 6, 1)).unwrap().birth_date,
            Some(d(2025, 1, 1))
        );
        assert_eq!(
            validate_at(cf, d(2024, 6, 1)).unwrap().birth_date,
            Some(d(1925, 1, 1))
        );
        // Same year but later in the year than `today`: previous century.
        assert_eq!(
            validate_at(cf, d(2025, 1, 1)).unwrap().birth_date,
            Some(d(2025, 1, 1))
        );
        assert_eq!(
            validate_at("RSSMRA85T10A562S", d(2085, 6, 1))
                .unwrap()
                .birth_date,
            Some(d(1985, 12, 10))
        );
    }

    #[test]
    fn shape_errors() {
        assert_eq!(validate_at("   ", TODAY()), Err(CfError::Empty));
        assert_eq!(
            validate_at("RSSMRA85T10A562", TODAY()),
            Err(CfError::Length { found: 15 })
        );
        assert_eq!(
            validate_at("RSSMRA85T10A562SS", TODAY()),
            Err(CfError::Length { found: 17 })
        );
        assert_eq!(
            validate_at("RSSMR485T10A562S", TODAY()),
            Err(CfError::Charset {
                position: 6,
                expected: "a letter"
            })
        );
        assert!(matches!(
            validate_at("RSSMRA8AT10A562S", TODAY()),
            Err(CfError::Charset { position: 8, .. })
        ));
        assert!(matches!(
            validate_at("RSSMRA85T10A56 S", TODAY()),
            Err(CfError::Charset { position: 15, .. })
        ));
        // Non-ASCII characters: 16 chars but more bytes; no panic, position of the first one.
        assert!(matches!(
            validate_at("RSSMRÀ85T10A562S", TODAY()),
            Err(CfError::Charset { position: 6, .. })
        ));
        assert!(validate_at("ÀÀÀÀÀÀÀÀÀÀÀÀÀÀÀÀ", TODAY()).is_err());
        assert!(validate_at("ẞẞẞẞẞẞẞẞẞẞẞẞẞẞẞẞ", TODAY()).is_err());
    }

    #[test]
    fn numeric_codes() {
        for cf in ["02780790107", "05979361218", "00488410010", " 02780790107 "] {
            assert_eq!(validate_any_at(cf, TODAY()), Ok(CfKind::Numeric), "{cf}");
        }
        assert_eq!(
            validate_any_at("01234567890", TODAY()),
            Err(CfError::CheckChar {
                expected: '7',
                found: '0'
            })
        );
        assert_eq!(
            validate_any_at("0278079010A", TODAY()),
            Err(CfError::Charset {
                position: 11,
                expected: "a digit"
            })
        );
        assert!(matches!(
            validate_any_at("RSSMRA85T10A562S", TODAY()),
            Ok(CfKind::Person(CfInfo { female: false, .. }))
        ));
        assert_eq!(
            validate_any_at("123", TODAY()),
            Err(CfError::Length { found: 3 })
        );
        assert!(validate_any("02780790107").is_ok());
        // A numeric code is not a personal one.
        assert_eq!(
            validate_at("02780790107", TODAY()),
            Err(CfError::Length { found: 11 })
        );
    }

    #[test]
    fn birthplace_checks() {
        // Ferrara (D548), Firenze (D612), San Giuliano Terme (A562).
        assert!(validate_with_birthplace_at("BNCMRA80A01D548T", TODAY()).is_ok());
        assert!(validate_with_birthplace_at("BNCMRA80A01D54UQ", TODAY()).is_ok());
        assert!(validate_with_birthplace_at("RSSMRA85T10A562S", TODAY()).is_ok());
        assert!(validate_with_birthplace("NREGCM80H30D612D").is_ok());
        // Foreign state Z200 (Afghanistan); check character Z computed independently.
        let info = validate_with_birthplace_at("RSSMRA85T10Z200Z", TODAY()).unwrap();
        assert_eq!(info.birthplace, "Z200");
        // States that no longer exist are valid for births while they existed (check
        // characters by scripts/gen_legacy_csv.py): Yugoslavia, the USSR, Serbia and
        // Montenegro, and the territory of Hong Kong, none of which are in ANPR's table.
        for cf in [
            "PTRDGN58D02Z118J",
            "VNVLGO50C55Z135U",
            "PTRMLN04H01Z157Y",
            "CHNMEI80L41Z221Q",
        ] {
            assert!(validate_with_birthplace_at(cf, TODAY()).is_ok(), "{cf}");
        }
        // … and not after: Yugoslavia ended on 4 February 2003.
        assert_eq!(
            validate_with_birthplace_at("PTRDGN04D02Z118T", TODAY()),
            Err(CfError::Birthplace {
                code: "Z118".into(),
                reason: BirthplaceReason::NotValidAtBirth {
                    valid_from: d(1900, 1, 1),
                    valid_to: d(2003, 2, 3)
                }
            })
        );
        // Unknown code Z999.
        assert_eq!(
            validate_with_birthplace_at("RSSMRA85T10Z999S", TODAY()),
            Err(CfError::Birthplace {
                code: "Z999".into(),
                reason: BirthplaceReason::Unknown
            })
        );
        // A008 ABBATEGGIO did not exist in 1935 (suppressed 1929, re-established 1947).
        assert_eq!(
            validate_with_birthplace_at("RSSMRA35A01A008N", TODAY()),
            Err(CfError::Birthplace {
                code: "A008".into(),
                reason: BirthplaceReason::NotValidAtBirth {
                    valid_from: d(1927, 1, 12),
                    valid_to: d(1929, 5, 22)
                }
            })
        );
        assert!(validate_with_birthplace_at("RSSMRA50A01A008O", TODAY()).is_ok());
        // Plain validation does not look at the birthplace.
        assert!(validate_at("RSSMRA35A01A008N", TODAY()).is_ok());
    }

    #[test]
    fn errors_never_contain_the_code() {
        let cases = [
            "BNCMRA80A01D548X",
            "RSSMRA85Z10A562B",
            "RSSMRA85T35A562G",
            "RSSMRA85B31A562F",
            "RSSMR485T10A562S",
            "RSSMRA85T10A562",
            "RSSMRA85T10Z999S",
            "RSSMRA35A01A008N",
            "01234567890",
        ];
        for cf in cases {
            let err = validate_any_at(cf, TODAY())
                .and_then(|_| validate_with_birthplace_at(cf, TODAY()).map(CfKind::Person))
                .unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(cf), "{text}");
                // Not even the name/surname or date part.
                assert!(!text.contains(&cf[..6]), "{text}");
            }
        }
    }
}
