//! Prices as whole cents: exact, never float drift.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An amount of money in cents. In JSON it is a decimal number with at most two
/// decimal places (`9.99`); a string (`"9.99"`) is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(pub i64);

/// Parses `"12"`, `"12.3"`, `"12.34"` exactly; more decimals, signs, exponents or
/// anything else is refused.
pub fn parse_decimal(text: &str) -> Option<Cents> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || whole.len() > 12 || frac.len() > 2 || (text.contains('.') && frac.is_empty()) {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(frac).map(Cents)
}

impl From<i64> for Cents {
    fn from(cents: i64) -> Self {
        Cents(cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Cents {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The shortest decimal that round-trips the f64 is exactly "<euros>.<cents>".
        serializer.serialize_f64(self.0 as f64 / 100.0)
    }
}

impl<'de> Deserialize<'de> for Cents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CentsVisitor;
        impl Visitor<'_> for CentsVisitor {
            type Value = Cents;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative amount with at most two decimal places")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cents, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(100))
                    .map(Cents)
                    .ok_or_else(|| E::custom("amount too large"))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cents, E> {
                if v < 0 {
                    return Err(E::custom("amount must not be negative"));
                }
                self.visit_u64(v.unsigned_abs())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cents, E> {
                // Rust prints the shortest decimal that reads back as `v`: the one the client wrote.
                parse_decimal(&v.to_string()).ok_or_else(|| E::custom("at most two decimal places, not negative"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cents, E> {
                parse_decimal(v.trim()).ok_or_else(|| E::custom("at most two decimal places, not negative"))
            }
        }
        deserializer.deserialize_any(CentsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        for (text, cents) in
            [("0", 0), ("12", 1200), ("12.3", 1230), ("12.34", 1234), ("0.01", 1), ("999999.99", 99_999_999)]
        {
            assert_eq!(parse_decimal(text), Some(Cents(cents)), "{text}");
        }
        for bad in ["", ".5", "5.", "1.234", "-1", "+1", "1e3", "1,5", " 1", "abc", "9999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn json_round_trip_has_no_float_drift() {
        for text in ["0.1", "0.29", "19.99", "1234.56", "0.07", "100"] {
            let cents: Cents = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::from_str::<Cents>(&serde_json::to_string(&cents).unwrap()).unwrap(), cents);
        }
        let sum: i64 = ["0.1", "0.2"].iter().map(|t| serde_json::from_str::<Cents>(t).unwrap().0).sum();
        assert_eq!(sum, 30);
        assert_eq!(serde_json::to_string(&Cents(1999)).unwrap(), "19.99");
        assert!(serde_json::from_str::<Cents>("1.001").is_err());
        assert!(serde_json::from_str::<Cents>("-5").is_err());
        assert!(serde_json::from_str::<Cents>("true").is_err());
    }
}
