//! Domain validators for Italian identifiers exchanged by municipal social services.
//!
//! They live together because they share reference data and rules: a personal codice fiscale
//! embeds a Belfiore place code (checked against [`comuni`]), and the numeric codice fiscale of a
//! company or body uses the same check digit as the partita IVA ([`partita_iva`]).
//!
//! Every validator takes untrusted input and never panics. Error values and their messages
//! never echo the whole input back, because codici fiscali and IBANs are personal data and error
//! messages end up in logs and flow reports.

pub mod codice_fiscale;
pub mod comuni;
pub mod iban;
pub mod partita_iva;
