//! Coded values. Every code carries its system, so a FHIR export can be faithful, and
//! is checked against that system's syntax (and check digit where the system has one).

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// The code systems Chartledger accepts, with their canonical FHIR system URIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSystem {
    SnomedCt,
    Loinc,
    RxNorm,
    Icd10,
}

impl CodeSystem {
    /// The system URI FHIR uses for this code system.
    pub fn uri(self) -> &'static str {
        match self {
            Self::SnomedCt => "http://snomed.info/sct",
            Self::Loinc => "http://loinc.org",
            Self::RxNorm => "http://www.nlm.nih.gov/research/umls/rxnorm",
            Self::Icd10 => "http://hl7.org/fhir/sid/icd-10",
        }
    }

    /// Does `code` have this system's syntax and check digit?
    pub fn accepts(self, code: &str) -> bool {
        match self {
            Self::SnomedCt => snomed_ok(code),
            Self::Loinc => loinc_ok(code),
            Self::RxNorm => code.len() <= 10 && all_digits(code) && !code.starts_with('0'),
            Self::Icd10 => icd10_ok(code),
        }
    }
}

/// A code from a code system, with an optional human-readable display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    pub system: CodeSystem,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    pub fn new(system: CodeSystem, code: impl Into<String>, display: Option<String>) -> Self {
        Self { system, code: code.into(), display }
    }

    /// Checks the code against its system and that it is one of `allowed`. `field` names
    /// the offending field in the error (a field name, never the value).
    pub fn validate(&self, allowed: &[CodeSystem], field: &'static str) -> Result<(), DomainError> {
        if !allowed.contains(&self.system) {
            return Err(DomainError::CodeSystemNotAllowed { field });
        }
        if !self.system.accepts(&self.code) {
            return Err(DomainError::MalformedCode { field });
        }
        if let Some(d) = &self.display {
            text(d, 256, field)?;
        }
        Ok(())
    }
}

/// A decimal number as written (`"7.2"`, `"-0.50"`): precision is clinical information,
/// so values are kept as text and never rounded through a float.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Decimal(String);

impl Decimal {
    pub fn new(s: impl Into<String>) -> Result<Self, DomainError> {
        let s = s.into();
        if decimal_ok(&s) {
            Ok(Self(s))
        } else {
            Err(DomainError::MalformedValue { field: "decimal" })
        }
    }
    pub fn from_int(v: i64) -> Self {
        Self(v.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// For comparisons against a reference range only.
    pub fn to_f64(&self) -> Option<f64> {
        self.0.parse().ok()
    }
    pub(crate) fn is_valid(&self) -> bool {
        decimal_ok(&self.0)
    }
}

/// A measured quantity with its UCUM unit (`mg/dL`, `mm[Hg]`, `/min`, `Cel`, `%`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: String,
}

impl Quantity {
    pub fn validate(&self, field: &'static str) -> Result<(), DomainError> {
        if !self.value.is_valid() {
            return Err(DomainError::MalformedValue { field });
        }
        if !ucum_ok(&self.unit) {
            return Err(DomainError::MalformedUnit { field });
        }
        Ok(())
    }
}

/// A reference range: either bound may be absent; both share the value's unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<Quantity>,
}

impl ReferenceRange {
    pub fn validate(&self, unit: &str, field: &'static str) -> Result<(), DomainError> {
        for q in self.low.iter().chain(self.high.iter()) {
            q.validate(field)?;
            if q.unit != unit {
                return Err(DomainError::UnitMismatch { field });
            }
        }
        if let (Some(l), Some(h)) = (&self.low, &self.high) {
            if l.value.to_f64() > h.value.to_f64() {
                return Err(DomainError::MalformedValue { field });
            }
        }
        Ok(())
    }

    /// `Some(true)` when the value lies outside the range.
    pub fn flags(&self, value: &Quantity) -> Option<bool> {
        let v = value.value.to_f64()?;
        let below = self.low.as_ref().and_then(|l| l.value.to_f64()).is_some_and(|l| v < l);
        let above = self.high.as_ref().and_then(|h| h.value.to_f64()).is_some_and(|h| v > h);
        Some(below || above)
    }
}

/// Free text limits: non-empty after trimming, at most `max` characters, no control
/// characters other than newlines and tabs.
pub fn text(s: &str, max: usize, field: &'static str) -> Result<(), DomainError> {
    if s.trim().is_empty() {
        return Err(DomainError::MissingField { field });
    }
    if s.chars().count() > max {
        return Err(DomainError::TooLong { field, max });
    }
    if s.chars().any(|c| (c.is_control() && c != '\n' && c != '\t' && c != '\r') || is_bidi_control(c)) {
        return Err(DomainError::MalformedValue { field });
    }
    Ok(())
}

/// Unicode's bidirectional formatting characters (UAX #9): invisible, and able to make
/// a name or note display as something other than what is stored (U+202E reverses it).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn decimal_ok(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    s.len() <= 32 && all_digits(int) && frac.is_none_or(all_digits)
}

/// SNOMED CT concept ids: 6 to 18 digits, no leading zero, partition identifier `00` or
/// `10` (a concept), and a valid Verhoeff check digit.
fn snomed_ok(code: &str) -> bool {
    if !(6..=18).contains(&code.len()) || !all_digits(code) || code.starts_with('0') {
        return false;
    }
    let partition = &code[code.len() - 3..code.len() - 1];
    matches!(partition, "00" | "10") && verhoeff_ok(code)
}

fn verhoeff_ok(code: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut c = 0u8;
    for (i, b) in code.bytes().rev().enumerate() {
        c = D[usize::from(c)][usize::from(P[i % 8][usize::from(b - b'0')])];
    }
    c == 0
}

/// LOINC codes: `NNNNN-C`, one to five digits, a dash and a mod-10 (Luhn) check digit.
fn loinc_ok(code: &str) -> bool {
    let Some((num, check)) = code.split_once('-') else { return false };
    if num.is_empty() || num.len() > 5 || !all_digits(num) || check.len() != 1 || !all_digits(check) {
        return false;
    }
    let sum: u32 = num
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    let expected = (10 - sum % 10) % 10;
    u32::from(check.as_bytes()[0] - b'0') == expected
}

/// ICD-10 (WHO and -CM): a letter, a digit, a digit or letter, then optionally a dot
/// and one to four digits or letters (`E11.9`, `S72.001A`, `J45`, `U07.1`).
fn icd10_ok(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() < 3 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_digit() {
        return false;
    }
    let alnum = |c: &u8| c.is_ascii_digit() || c.is_ascii_uppercase();
    if !alnum(&b[2]) {
        return false;
    }
    match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => (1..=4).contains(&rest.len()) && rest.iter().all(alnum),
        _ => false,
    }
}

/// UCUM unit syntax (case-sensitive form): printable ASCII without spaces, balanced
/// `[]`, `{}` and `()`, at most 64 bytes. This is a syntax check, not a unit registry:
/// it rejects what cannot be UCUM, and keeps the unit exactly as written.
fn ucum_ok(unit: &str) -> bool {
    if unit.is_empty() || unit.len() > 64 || !unit.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let mut stack = Vec::new();
    for c in unit.chars() {
        match c {
            '[' | '{' | '(' => stack.push(c),
            ']' | '}' | ')' => {
                let open = match c {
                    ']' => '[',
                    '}' => '{',
                    _ => '(',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snomed_check_digits() {
        // Published concept ids: diabetes mellitus type 2, asthma, penicillin allergy,
        // hypertensive disorder, the root concept.
        for ok in ["44054006", "195967001", "91936005", "38341003", "138875005"] {
            assert!(CodeSystem::SnomedCt.accepts(ok), "{ok}");
        }
        for bad in ["44054007", "4405400", "044054006", "12345", "abc", "44054016"] {
            assert!(!CodeSystem::SnomedCt.accepts(bad), "{bad}");
        }
    }

    #[test]
    fn loinc_check_digits() {
        // Glucose, heart rate, systolic BP, HbA1c, body temperature.
        for ok in ["2345-7", "8867-4", "8480-6", "4548-4", "8310-5"] {
            assert!(CodeSystem::Loinc.accepts(ok), "{ok}");
        }
        for bad in ["2345-8", "2345", "123456-7", "-7", "2345-77", "ab-1"] {
            assert!(!CodeSystem::Loinc.accepts(bad), "{bad}");
        }
    }

    #[test]
    fn icd10_and_rxnorm() {
        for ok in ["E11.9", "J45", "S72.001A", "I10", "Z00.00", "U07.1"] {
            assert!(CodeSystem::Icd10.accepts(ok), "{ok}");
        }
        for bad in ["e11.9", "1E1.9", "E1", "E11.", "E11.12345", "E11-9"] {
            assert!(!CodeSystem::Icd10.accepts(bad), "{bad}");
        }
        assert!(CodeSystem::RxNorm.accepts("197361"));
        assert!(!CodeSystem::RxNorm.accepts("0197361"));
        assert!(!CodeSystem::RxNorm.accepts("RX1"));
    }

    #[test]
    fn ucum_and_decimals() {
        for ok in ["mg/dL", "mm[Hg]", "/min", "Cel", "%", "10*3/uL", "kg/m2", "{beats}/min"] {
            assert!(ucum_ok(ok), "{ok}");
        }
        for bad in ["", "mg dL", "mm[Hg", "mg)", "é"] {
            assert!(!ucum_ok(bad), "{bad}");
        }
        for ok in ["7", "7.20", "-0.5", "120"] {
            assert!(Decimal::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".5", "5.", "1e3", "NaN", "--1", "1.2.3"] {
            assert!(Decimal::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reference_range_flags() {
        let q = |v: &str| Quantity { value: Decimal::new(v).unwrap(), unit: "mg/dL".into() };
        let r = ReferenceRange { low: Some(q("70")), high: Some(q("99")) };
        assert_eq!(r.validate("mg/dL", "range"), Ok(()));
        assert_eq!(r.flags(&q("120")), Some(true));
        assert_eq!(r.flags(&q("85")), Some(false));
        assert_eq!(r.validate("mmol/L", "range"), Err(DomainError::UnitMismatch { field: "range" }));
    }
}
