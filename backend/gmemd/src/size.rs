//! Byte sizes as people write and read them: `512M`, `1.5G`, `2GiB` in,
//! `512 MiB`, `1.5 GiB` out. Units are binary (K = 1024), as in QEMU's `-m`.

/// Why a size did not parse. Each says what was wrong with the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits where the number belongs.
    #[error("invalid size {0:?}: expected a number with an optional unit, e.g. 512M or 1.5G")]
    NoNumber(String),
    /// The number is not a plain decimal (`1.2.3`, `1.`, `.5`).
    #[error("invalid size {0:?}: the number must be decimal digits, with at most one '.' between digits")]
    BadNumber(String),
    /// A unit other than B, K, M, G, T or P (with optional B / iB).
    #[error("invalid size unit {unit:?} in {text:?}: use B, K, M, G, T or P (binary: K = 1024)")]
    BadUnit {
        /// The whole text.
        text: String,
        /// The unit part.
        unit: String,
    },
    /// A fraction that does not come to whole bytes (`1.1K` = 1126.4 bytes).
    #[error("size {0:?} is not a whole number of bytes")]
    Fraction(String),
    /// More than `u64::MAX` bytes.
    #[error("size {0:?} is too large: the most is 16 EiB - 1 ({max} bytes)", max = u64::MAX)]
    TooLarge(String),
}

/// Parses `4096`, `64K`, `512M`, `1.5G`, `2GiB`, `1 TiB`.
///
/// # Errors
/// [`SizeError`], naming what is wrong with `text`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(SizeError::NoNumber(text.to_owned()));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(SizeError::BadNumber(text.to_owned()));
    }
    let shift = unit_shift(unit.trim()).ok_or_else(|| SizeError::BadUnit {
        text: text.to_owned(),
        unit: unit.trim().to_owned(),
    })?;
    let too_large = || SizeError::TooLarge(text.to_owned());
    // u128 holds every u64 shifted by up to 50 bits, so only the final
    // conversion can overflow.
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole
        .checked_shl(shift)
        .filter(|b| *b <= u128::from(u64::MAX));
    if !fraction.is_empty() {
        // Digits beyond 38 cannot change a whole-byte result.
        let digits = fraction.trim_end_matches('0');
        if digits.len() > 38 {
            return Err(SizeError::Fraction(text.to_owned()));
        }
        let numerator: u128 = if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .map_err(|_| SizeError::BadNumber(text.to_owned()))?
        };
        let denominator = 10u128.pow(u32::try_from(digits.len()).unwrap_or(38));
        // numerator < 10^38 < 2^127; shifting by 50 could overflow, so
        // check the division is exact before multiplying.
        let scale = 1u128 << shift;
        let g = gcd(scale, denominator);
        if denominator / g != 1 && numerator % (denominator / g) != 0 {
            return Err(SizeError::Fraction(text.to_owned()));
        }
        let part = (numerator / (denominator / g)).checked_mul(scale / g);
        bytes = bytes.and_then(|b| part.and_then(|p| b.checked_add(p)));
    }
    bytes
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(too_large)
}

fn unit_shift(unit: &str) -> Option<u32> {
    let upper = unit.to_ascii_uppercase();
    let prefix = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B').filter(|p| !p.is_empty()))
        .unwrap_or(&upper);
    Some(match prefix {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return None,
    })
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Formats a byte count for people: `512 MiB`, `1.5 GiB`, `23.5 GiB`, `100 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit < UNITS.len() - 1 && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        return format!("{} {}", bytes / scale, UNITS[unit]);
    }
    // Display only: the precision lost above 2^53 bytes does not matter.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / scale as f64;
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2 gb"), Ok(2 << 30));
        assert_eq!(parse_size(" 1 TiB "), Ok(1 << 40));
        assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.50M"), Ok(1536 << 10));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        // 2^-30 GiB is one byte; anything finer is not whole bytes.
        assert_eq!(parse_size("0.000000000931322574615478515625G"), Ok(1));
        assert!(matches!(
            parse_size("0.0000000009313225746154785156G"),
            Err(SizeError::Fraction(_))
        ));
    }

    #[test]
    fn what_is_formatted_parses_back() {
        for bytes in [512 << 20, 1 << 30, 1536 << 20, 100, 3 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
    }

    #[test]
    fn each_bad_size_says_what_is_wrong() {
        type Check = fn(&SizeError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("G", |e| matches!(e, SizeError::NoNumber(_))),
            ("", |e| matches!(e, SizeError::NoNumber(_))),
            (
                "1X",
                |e| matches!(e, SizeError::BadUnit { unit, .. } if unit == "X"),
            ),
            ("1.2.3G", |e| matches!(e, SizeError::BadNumber(_))),
            ("1.G", |e| matches!(e, SizeError::BadNumber(_))),
            (".5G", |e| matches!(e, SizeError::BadNumber(_))),
            ("1.1K", |e| matches!(e, SizeError::Fraction(_))),
            ("18446744073709551616", |e| {
                matches!(e, SizeError::TooLarge(_))
            }),
            ("16384P", |e| matches!(e, SizeError::TooLarge(_))),
        ];
        for (text, check) in cases {
            let err = parse_size(text).unwrap_err();
            assert!(check(&err), "{text}: {err}");
        }
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .to_string()
            .contains("too large"));
        assert!(parse_size("99999999999999999999999999999999999999999T").is_err());
        assert!(parse_size("1.5X").unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(24_105 << 20), "23.5 GiB");
        assert_eq!(format_size(u64::MAX), "16384.0 PiB");
    }
}
