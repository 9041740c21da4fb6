//! Human byte sizes: `"10GiB"`, `"512MiB"`, `"1.5GiB"`, `"80GB"` or a plain number of bytes;
//! and human spans of time: `"1s"`, `"500ms"`, `"2.5s"`, `"1m"` or a number of seconds.
//!
//! Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones (`kB`/`KB`,
//! `MB`, `GB`, `TB`) powers of 1000, as on a GPU's data sheet versus `nvidia-smi`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of bytes, written and read in human units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a byte size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("empty size")]
    Empty,
    #[error("`{0}` is not a size: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)")]
    Malformed(String),
    #[error("`{0}` has an unknown unit: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB")]
    UnknownUnit(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    /// The size in GiB, for display.
    pub fn as_gib(self) -> f64 {
        self.0 as f64 / Self::GIB as f64
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim_start());
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(ByteSizeError::Malformed(s.to_owned()));
        }
        let multiplier = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| ByteSizeError::UnknownUnit(s.to_owned()))?;
        let bytes = match number.split_once('.') {
            None => number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(multiplier))
                .ok_or_else(|| ByteSizeError::Overflow(s.to_owned()))?,
            Some((whole, frac)) => {
                if frac.contains('.') {
                    return Err(ByteSizeError::Malformed(s.to_owned()));
                }
                let whole: u64 = whole.parse().map_err(|_| ByteSizeError::Overflow(s.to_owned()))?;
                // Fractions are exact to the byte: scale the fraction's digits by the unit.
                let digits = frac.len().min(18) as u32;
                let frac: u128 = frac[..digits as usize].parse().map_err(|_| ByteSizeError::Malformed(s.to_owned()))?;
                let frac_bytes = frac * u128::from(multiplier) / 10u128.pow(digits);
                whole
                    .checked_mul(multiplier)
                    .and_then(|w| w.checked_add(u64::try_from(frac_bytes).ok()?))
                    .ok_or_else(|| ByteSizeError::Overflow(s.to_owned()))?
            }
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, so it reads back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, m) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{name}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10GiB\", \"512MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A span of time, written `"1s"`, `"500ms"`, `"2.5s"`, `"1m"`, `"1h"` or as a number of
/// seconds, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub std::time::Duration);

/// Why a span of time could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("`{0}` is not a span of time: expected a number with a unit (ms, s, m, h), e.g. \"1s\" or \"500ms\"")]
    Malformed(String),
    #[error("`{0}` is too long")]
    Overflow(String),
}

impl Span {
    pub fn from_millis(ms: u64) -> Self {
        Span(std::time::Duration::from_millis(ms))
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim_start());
        let ms_per_unit: u64 = match unit {
            "ms" => 1,
            "s" | "" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(SpanError::Malformed(s.to_owned())),
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(SpanError::Malformed(s.to_owned()));
        }
        let value: f64 = number.parse().map_err(|_| SpanError::Malformed(s.to_owned()))?;
        let ms = (value * ms_per_unit as f64).round();
        if !ms.is_finite() || ms > 1e15 {
            return Err(SpanError::Overflow(s.to_owned()));
        }
        Ok(Span::from_millis(ms as u64))
    }
}

impl fmt::Display for Span {
    /// Whole seconds as `"2s"`, anything else as milliseconds (`"1500ms"`): it reads back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms >= 1000 && ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a span of time such as \"1s\" or \"500ms\", or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                v.checked_mul(1000).map(Span::from_millis).ok_or_else(|| E::custom(format!("{v} seconds is too long")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} seconds is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Span, E> {
                if (0.0..1e12).contains(&v) {
                    Ok(Span::from_millis((v * 1000.0).round() as u64))
                } else {
                    Err(E::custom(format!("{v} is not a number of seconds")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("10GiB".parse(), Ok(ByteSize(10 << 30)));
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("512 MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!("80GB".parse(), Ok(ByteSize(80_000_000_000)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("7B".parse(), Ok(ByteSize(7)));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!("".parse::<ByteSize>(), Err(ByteSizeError::Empty));
        assert!(matches!("GiB".parse::<ByteSize>(), Err(ByteSizeError::Malformed(_))));
        assert!(matches!("1.2.3GiB".parse::<ByteSize>(), Err(ByteSizeError::Malformed(_))));
        assert!(matches!("-1GiB".parse::<ByteSize>(), Err(ByteSizeError::Malformed(_))));
        assert!(matches!("10 gigs".parse::<ByteSize>(), Err(ByteSizeError::UnknownUnit(_))));
        assert!(matches!("99999999999TiB".parse::<ByteSize>(), Err(ByteSizeError::Overflow(_))));
    }

    #[test]
    fn display_round_trips() {
        for s in ["10GiB", "512MiB", "1536MiB", "4097", "3TiB"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 1024\nb = \"1KiB\"").unwrap();
        assert_eq!((t.a, t.b), (ByteSize(1024), ByteSize(1024)));
        assert!(toml::from_str::<T>("a = -1\nb = 1").is_err());
    }

    #[test]
    fn spans_parse_and_round_trip() {
        assert_eq!("1s".parse(), Ok(Span::from_millis(1000)));
        assert_eq!("500ms".parse(), Ok(Span::from_millis(500)));
        assert_eq!("2.5s".parse(), Ok(Span::from_millis(2500)));
        assert_eq!("1m".parse(), Ok(Span::from_millis(60_000)));
        assert_eq!("3".parse(), Ok(Span::from_millis(3000)));
        for bad in ["", "s", "1.s", "1 sec", "-1s", "1.2.3s", "ms5"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?}");
        }
        for s in ["1s", "1500ms", "250ms", "60s"] {
            assert_eq!(s.parse::<Span>().unwrap().to_string(), s);
        }
        #[derive(Deserialize)]
        struct T {
            a: Span,
            b: Span,
            c: Span,
        }
        let t: T = toml::from_str("a = 2\nb = 0.25\nc = \"3s\"").unwrap();
        assert_eq!((t.a, t.b, t.c), (Span::from_millis(2000), Span::from_millis(250), Span::from_millis(3000)));
        assert!(toml::from_str::<T>("a = -1\nb = 1\nc = 1").is_err());
    }
}
