//! Historical register of Italian comuni and foreign states, keyed by Belfiore code.
//!
//! Data come from ANPR (CC BY 4.0, see `mappings/comuni/SOURCE.md`) and are embedded in the
//! binary: the validators must work offline and give the same answer on every installation of a
//! given release. The CSVs are parsed once, on first use, because most runs never need them.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::NaiveDate;

const COMUNI_CSV: &str = include_str!("../../../mappings/comuni/ANPR_archivio_comuni.csv");
const STATI_ESTERI_CSV: &str = include_str!("../../../mappings/comuni/ANPR_stati_esteri.csv");
/// States that no longer exist and territories without a code in the ANPR table, in its
/// column names (see `mappings/comuni/SOURCE.md`): their codes are in older codici fiscali.
const STATI_CESSATI_CSV: &str = include_str!("../../../mappings/comuni/stati_cessati.csv");

/// Province abbreviation conventionally used for places abroad (e.g. on Agenzia delle Entrate
/// forms), so that foreign states fit the same record shape as comuni.
pub const FOREIGN_PROVINCE: &str = "EE";

/// One validity period of a comune (or foreign state) under a Belfiore code.
///
/// A code usually has several periods: renames, moves to a new province, ISTAT renumbering,
/// suppression and re-establishment each close one record and open another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comune {
    /// Belfiore (codice catastale) code, e.g. `D969`; `Zxxx` for foreign states.
    pub belfiore: String,
    /// ISTAT code in force during this period: 6 digits for comuni, 3 digits for foreign states;
    /// kept as text because leading zeros are significant.
    pub istat: String,
    /// Official Italian name during this period.
    pub name: String,
    /// Province abbreviation during this period; [`FOREIGN_PROVINCE`] for foreign states.
    pub province: String,
    /// First day of validity.
    pub valid_from: NaiveDate,
    /// Last day of validity, inclusive (9999-12-31 while still valid).
    pub valid_to: NaiveDate,
    /// Whether this is a foreign state rather than an Italian comune.
    pub foreign: bool,
    /// ISTAT code of the region (2 digits) during this period; empty for foreign states
    /// and for regions no longer existing (`EX` in the archive).
    pub region: String,
}

impl Comune {
    /// Whether this record was in force on `date` (both ends inclusive).
    pub fn covers(&self, date: NaiveDate) -> bool {
        self.valid_from <= date && date <= self.valid_to
    }
}

/// Outcome of checking a Belfiore code against a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceCheck {
    /// The code was in force; this is the record covering the date.
    Valid(&'static Comune),
    /// The code exists but no record covers the date. The window reported is the nearest one:
    /// the last period that ended before the date, or the first period if the date precedes
    /// them all, because that is what an operator needs to spot a wrong code or date.
    NotValidAt {
        /// Name during the reported period.
        name: String,
        /// Start of the reported period.
        valid_from: NaiveDate,
        /// End of the reported period (inclusive).
        valid_to: NaiveDate,
    },
    /// No comune or foreign state ever had this code.
    Unknown,
}

/// Hashed with foldhash (seeded per process, as the standard hasher is) rather than SipHash:
/// the index is looked up once or twice for every record of a load that checks birthplaces,
/// and SipHash was about 1 % of the CSV benchmark's instructions.
type Index = HashMap<String, Vec<Comune>, foldhash::fast::RandomState>;

static INDEX: OnceLock<Index> = OnceLock::new();

fn index() -> &'static Index {
    INDEX.get_or_init(build_index)
}

fn build_index() -> Index {
    let mut index = Index::default();
    for record in parse_comuni(COMUNI_CSV)
        .into_iter()
        .chain(parse_stati_esteri(STATI_ESTERI_CSV))
        .chain(parse_stati_esteri(STATI_CESSATI_CSV))
    {
        index
            .entry(record.belfiore.clone())
            .or_default()
            .push(record);
    }
    for records in index.values_mut() {
        records.sort_by_key(|r| (r.valid_from, r.valid_to));
    }
    index
}

/// Looks columns up by header name rather than position, so that a reordered ANPR export is still
/// read correctly. A missing column yields no records at all; the embedded data are covered by
/// tests, so that can only surface when the data files are replaced.
fn columns<const N: usize>(headers: &csv::StringRecord, names: [&str; N]) -> Option<[usize; N]> {
    let mut found = [0; N];
    for (slot, name) in found.iter_mut().zip(names) {
        *slot = headers.iter().position(|h| h.trim() == name)?;
    }
    Some(found)
}

fn reader(text: &str) -> csv::Reader<&[u8]> {
    // The ANPR archive starts with a UTF-8 BOM, which would otherwise stick to the first header.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes())
}

fn is_belfiore(code: &str) -> bool {
    matches!(code.as_bytes(), [l, d @ ..] if d.len() == 3
        && l.is_ascii_uppercase()
        && d.iter().all(u8::is_ascii_digit))
}

fn parse_comuni(text: &str) -> Vec<Comune> {
    let mut rdr = reader(text);
    let Some([from, to, istat, code, name, province, region]) = rdr.headers().ok().and_then(|h| {
        columns(
            h,
            [
                "DATAISTITUZIONE",
                "DATACESSAZIONE",
                "CODISTAT",
                "CODCATASTALE",
                "DENOMINAZIONE_IT",
                "SIGLAPROVINCIA",
                "IDREGIONE",
            ],
        )
    }) else {
        return Vec::new();
    };
    // The index is built while the first batch waits for it: the fixed-form date parser,
    // not chrono's format interpreter (a third of the build).
    let iso_format = crate::value::DateFormat::new("%Y-%m-%d").ok();
    let iso = |s: &str| iso_format.as_ref()?.date(s).ok();
    rdr.records()
        .filter_map(Result::ok)
        .filter_map(|r| {
            let belfiore = r.get(code)?.trim().to_ascii_uppercase();
            // Some historical rows carry `ND` (not determined): they cannot appear in a codice
            // fiscale, so they are left out rather than indexed under a bogus key.
            if !is_belfiore(&belfiore) {
                return None;
            }
            Some(Comune {
                belfiore,
                istat: r.get(istat)?.trim().to_owned(),
                name: r.get(name)?.trim().to_owned(),
                province: r.get(province)?.trim().to_owned(),
                valid_from: iso(r.get(from)?)?,
                valid_to: iso(r.get(to)?)?,
                foreign: false,
                region: r
                    .get(region)
                    .map(str::trim)
                    .filter(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_digit()))
                    .unwrap_or_default()
                    .to_owned(),
            })
        })
        .collect()
}

fn parse_stati_esteri(text: &str) -> Vec<Comune> {
    let mut rdr = reader(text);
    let Some([from, to, istat, code, name]) = rdr.headers().ok().and_then(|h| {
        columns(
            h,
            [
                "DATAINIZIOVALIDITA",
                "DATAFINEVALIDITA",
                "CODISTAT",
                "CODAT",
                "DENOMINAZIONE",
            ],
        )
    }) else {
        return Vec::new();
    };
    // An empty validity bound means "open" on that side; an unparseable one drops the row, as
    // guessing a date would turn data errors into wrong answers.
    let dmy_format = crate::value::DateFormat::new("%d/%m/%Y").ok();
    let dmy = |s: &str, open: NaiveDate| {
        let s = s.trim();
        if s.is_empty() {
            Some(open)
        } else {
            dmy_format.as_ref()?.date(s).ok()
        }
    };
    rdr.records()
        .filter_map(Result::ok)
        .filter_map(|r| {
            let belfiore = r.get(code)?.trim().to_ascii_uppercase();
            // Italy, stateless persons and several territories have no CODAT: nothing to index.
            if !is_belfiore(&belfiore) {
                return None;
            }
            Some(Comune {
                belfiore,
                istat: r.get(istat)?.trim().to_owned(),
                name: r.get(name)?.trim().to_owned(),
                province: FOREIGN_PROVINCE.to_owned(),
                valid_from: dmy(r.get(from)?, NaiveDate::MIN)?,
                valid_to: dmy(r.get(to)?, NaiveDate::MAX)?,
                foreign: true,
                region: String::new(),
            })
        })
        .collect()
}

/// All known validity periods of a Belfiore code, oldest first; empty if the code is unknown.
///
/// Input is trimmed and uppercased, since codes are often typed by hand.
pub fn history(belfiore: &str) -> &'static [Comune] {
    // Codes as stores and exports hold them (trimmed, uppercase) are looked up without a
    // copy: this runs for every record of a load that checks birthplaces.
    index()
        .get(crate::value::trim_ascii_upper(belfiore).as_ref())
        .map_or(&[], Vec::as_slice)
}

/// Checks whether `belfiore` (a comune, or a `Zxxx` foreign state) was in force on `date`.
///
/// A code is valid if any of its records covers the date; records can leave gaps (a comune
/// suppressed and later re-established), and a date in a gap is [`PlaceCheck::NotValidAt`].
pub fn lookup_at(belfiore: &str, date: NaiveDate) -> PlaceCheck {
    let records = history(belfiore);
    if let Some(record) = records.iter().find(|r| r.covers(date)) {
        return PlaceCheck::Valid(record);
    }
    let nearest = records
        .iter()
        .rev()
        .find(|r| r.valid_to < date)
        .or_else(|| records.first());
    match nearest {
        Some(r) => PlaceCheck::NotValidAt {
            name: r.name.clone(),
            valid_from: r.valid_from,
            valid_to: r.valid_to,
        },
        None => PlaceCheck::Unknown,
    }
}

/// Whether any comune or foreign state ever had this Belfiore code, regardless of date.
pub fn exists(belfiore: &str) -> bool {
    !history(belfiore).is_empty()
}

/// The ISTAT code in force for `belfiore` on `date`, with leading zeros kept.
///
/// Six digits for comuni (the code changes when a comune moves to a new province, so the date
/// matters); three digits (ISTAT state code) for `Zxxx` foreign states. `None` if the code is
/// unknown, not in force on that date, or a state that no longer exists (their ISTAT codes
/// are not in the data).
pub fn istat_code_at(belfiore: &str, date: NaiveDate) -> Option<String> {
    match lookup_at(belfiore, date) {
        // The states that no longer exist carry no ISTAT code here (stati_cessati.csv).
        PlaceCheck::Valid(record) if !record.istat.is_empty() => Some(record.istat.clone()),
        PlaceCheck::Valid(_) | PlaceCheck::NotValidAt { .. } | PlaceCheck::Unknown => None,
    }
}

/// The ISTAT region code (2 digits) of the comune `belfiore` on `date`; `None` for foreign
/// states, unknown codes, codes not in force, and suppressed regions.
pub fn istat_region_at(belfiore: &str, date: NaiveDate) -> Option<String> {
    match lookup_at(belfiore, date) {
        PlaceCheck::Valid(record) if !record.region.is_empty() => Some(record.region.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_with_the_comune() {
        let today = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        assert_eq!(istat_region_at("D969", today).as_deref(), Some("07"));
        assert_eq!(istat_code_at("D969", today).as_deref(), Some("010025"));
        assert_eq!(istat_region_at("H501", today).as_deref(), Some("12"));
        assert_eq!(istat_region_at("Z100", today), None);
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn embedded_data_are_parsed() {
        // Distinct Belfiore codes in the ANPR archive (ND rows excluded) plus foreign states.
        assert!(index().len() > 9_900, "{}", index().len());
        assert!(
            index()
                .values()
                .flatten()
                .filter(|c| !c.foreign && c.valid_to == d(9999, 12, 31))
                .count()
                >= 7_800
        );
        assert!(!exists("ND"));
    }

    #[test]
    fn genova_valid_in_1980() {
        match lookup_at("D969", d(1980, 1, 1)) {
            PlaceCheck::Valid(c) => {
                assert_eq!(c.name, "GENOVA");
                assert_eq!(c.province, "GE");
                assert_eq!(c.istat, "010025");
                assert!(!c.foreign);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            istat_code_at("D969", d(1980, 1, 1)).as_deref(),
            Some("010025")
        );
    }

    #[test]
    fn renamed_comune_valid_under_both_names() {
        match lookup_at("A001", d(1900, 1, 1)) {
            PlaceCheck::Valid(c) => assert_eq!(c.name, "ABANO"),
            other => panic!("{other:?}"),
        }
        match lookup_at("A001", d(2000, 1, 1)) {
            PlaceCheck::Valid(c) => assert_eq!(c.name, "ABANO TERME"),
            other => panic!("{other:?}"),
        }
        // Boundary days of the rename are both covered.
        assert!(
            matches!(lookup_at("A001", d(1924, 11, 13)), PlaceCheck::Valid(c) if c.name == "ABANO")
        );
        assert!(
            matches!(lookup_at("A001", d(1924, 11, 14)), PlaceCheck::Valid(c) if c.name == "ABANO TERME")
        );
        assert_eq!(history("A001").len(), 2);
    }

    #[test]
    fn comune_checked_before_it_existed() {
        // ABETONE CUTIGLIANO was created on 2017-01-01 by merging two comuni.
        assert_eq!(
            lookup_at("M376", d(2000, 1, 1)),
            PlaceCheck::NotValidAt {
                name: "ABETONE CUTIGLIANO".into(),
                valid_from: d(2017, 1, 1),
                valid_to: d(9999, 12, 31),
            }
        );
        assert!(matches!(
            lookup_at("M376", d(2017, 1, 1)),
            PlaceCheck::Valid(_)
        ));
        // Before the first record of an old comune too.
        assert!(matches!(
            lookup_at("A001", d(1850, 1, 1)),
            PlaceCheck::NotValidAt { valid_from, .. } if valid_from == d(1866, 11, 19)
        ));
    }

    #[test]
    fn date_in_gap_between_records_is_not_valid() {
        // ABBATEGGIO was suppressed in 1929 and re-established in 1947.
        assert_eq!(
            lookup_at("A008", d(1935, 6, 1)),
            PlaceCheck::NotValidAt {
                name: "ABBATEGGIO".into(),
                valid_from: d(1927, 1, 12),
                valid_to: d(1929, 5, 22),
            }
        );
        assert_eq!(istat_code_at("A008", d(1935, 6, 1)), None);
        assert!(matches!(
            lookup_at("A008", d(1950, 1, 1)),
            PlaceCheck::Valid(_)
        ));
    }

    #[test]
    fn ceased_comune_after_cessation() {
        // ABBADIA ALPINA ceased in 1928 with no successor under the same code.
        assert!(matches!(
            lookup_at("A003", d(1950, 1, 1)),
            PlaceCheck::NotValidAt { valid_to, .. } if valid_to == d(1928, 12, 5)
        ));
        assert!(matches!(
            lookup_at("A003", d(1900, 1, 1)),
            PlaceCheck::Valid(_)
        ));
    }

    #[test]
    fn unknown_and_malformed_codes() {
        assert_eq!(lookup_at("X999", d(2000, 1, 1)), PlaceCheck::Unknown);
        assert_eq!(lookup_at("", d(2000, 1, 1)), PlaceCheck::Unknown);
        assert_eq!(lookup_at("ÀÀÀÀ", d(2000, 1, 1)), PlaceCheck::Unknown);
        assert!(!exists("X999"));
        assert_eq!(istat_code_at("X999", d(2000, 1, 1)), None);
        assert!(history("X999").is_empty());
    }

    #[test]
    fn input_is_trimmed_and_uppercased() {
        assert!(exists(" d969 "));
        assert!(matches!(
            lookup_at("d969", d(2020, 1, 1)),
            PlaceCheck::Valid(_)
        ));
    }

    #[test]
    fn istat_code_follows_province_changes() {
        // ABBADIA CERRETO moved from Milano to the new province of Lodi in 1992.
        assert_eq!(
            istat_code_at("A004", d(1980, 1, 1)).as_deref(),
            Some("015001")
        );
        assert_eq!(
            istat_code_at("A004", d(2000, 1, 1)).as_deref(),
            Some("098001")
        );
        assert_eq!(
            istat_code_at("A001", d(2000, 1, 1)).as_deref(),
            Some("028001")
        );
    }

    #[test]
    fn foreign_state_is_valid() {
        match lookup_at("Z200", d(1990, 5, 5)) {
            PlaceCheck::Valid(c) => {
                assert_eq!(c.name, "AFGHANISTAN");
                assert_eq!(c.istat, "301");
                assert_eq!(c.province, FOREIGN_PROVINCE);
                assert!(c.foreign);
            }
            other => panic!("{other:?}"),
        }
        assert!(exists("Z112"));
        assert_eq!(istat_code_at("Z112", d(2000, 1, 1)).as_deref(), Some("216"));
        // The ANPR table starts all states on 1900-01-01.
        assert!(matches!(
            lookup_at("Z200", d(1899, 12, 31)),
            PlaceCheck::NotValidAt { .. }
        ));
    }
}
