//! Human byte sizes: `"10GiB"`, `"512MiB"`, `"1.5GiB"`, `"80GB"` or a plain number of bytes.
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
    #[error(
        "`{0}` is not a size: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
    )]
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
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
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
                let whole: u64 = whole
                    .parse()
                    .map_err(|_| ByteSizeError::Overflow(s.to_owned()))?;
                // Fractions are exact to the byte: scale the fraction's digits by the unit.
                let digits = frac.len().min(18) as u32;
                let frac: u128 = frac[..digits as usize]
                    .parse()
                    .map_err(|_| ByteSizeError::Malformed(s.to_owned()))?;
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
        for (name, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
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
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
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
        assert!(matches!(
            "GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Malformed(_))
        ));
        assert!(matches!(
            "1.2.3GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Malformed(_))
        ));
        assert!(matches!(
            "-1GiB".parse::<ByteSize>(),
            Err(ByteSizeError::Malformed(_))
        ));
        assert!(matches!(
            "10 gigs".parse::<ByteSize>(),
            Err(ByteSizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            "99999999999TiB".parse::<ByteSize>(),
            Err(ByteSizeError::Overflow(_))
        ));
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
}
