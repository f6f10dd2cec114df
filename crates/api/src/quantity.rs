//! Exact parsing of Kubernetes resource quantities (`128Mi`, `1.5Gi`, `500m`, `2e3`, `1k`).
//!
//! Memory and CPU sizes decide placement and QEMU arguments, so they are parsed exactly: a quantity is
//! an integer mantissa times a power of ten, never a float. Binary suffixes are folded into the
//! mantissa (`1Ki` = 1024 x 10^0), so every quantity compares and converts without rounding surprises.

use std::cmp::Ordering;
use std::fmt;

/// Longest quantity string accepted; Kubernetes quantities are short and anything longer is a mistake.
const MAX_LEN: usize = 64;
/// Most significant digits kept exactly.
const MAX_DIGITS: usize = 30;
/// Largest decimal exponent accepted, in either direction.
const MAX_EXPONENT: i32 = 60;

/// A parsed quantity: `mantissa * 10^scale`, with trailing zeros of the mantissa folded into `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    mantissa: i128,
    scale: i32,
}

/// Why a string is not a quantity; the message is shown to users after the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("quantity is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Syntax,
    #[error(
        "unknown suffix {0:?}: use one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent"
    )]
    Suffix(String),
    #[error("quantity has more than {MAX_DIGITS} significant digits")]
    TooPrecise,
    #[error("quantity exponent is out of range")]
    OutOfRange,
}

impl Quantity {
    /// Parses a quantity string exactly.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        if input.len() > MAX_LEN {
            return Err(QuantityError::TooLong);
        }
        let bytes = input.as_bytes();
        let mut pos = 0;
        let negative = match bytes[0] {
            b'-' => {
                pos = 1;
                true
            }
            b'+' => {
                pos = 1;
                false
            }
            _ => false,
        };
        let number_start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
            pos += 1;
        }
        let number = &input[number_start..pos];
        let suffix = &input[pos..];
        let (mantissa, mut scale) = parse_decimal(number)?;
        let (decimal_exponent, binary_power) = parse_suffix(suffix)?;
        scale = scale
            .checked_add(decimal_exponent)
            .ok_or(QuantityError::OutOfRange)?;
        let mut mantissa = mantissa;
        if binary_power > 0 {
            mantissa = mantissa
                .checked_mul(1i128 << binary_power)
                .ok_or(QuantityError::OutOfRange)?;
        }
        if negative {
            mantissa = -mantissa;
        }
        Self::normalized(mantissa, scale)
    }

    fn normalized(mut mantissa: i128, mut scale: i32) -> Result<Self, QuantityError> {
        if mantissa == 0 {
            return Ok(Self {
                mantissa: 0,
                scale: 0,
            });
        }
        while mantissa % 10 == 0 {
            mantissa /= 10;
            scale += 1;
        }
        if !(-MAX_EXPONENT * 2..=MAX_EXPONENT * 2).contains(&scale) {
            return Err(QuantityError::OutOfRange);
        }
        Ok(Self { mantissa, scale })
    }

    /// The value as a whole number, rounded up (Kubernetes' `Value()`): bytes for memory.
    /// `None` when it does not fit in an `i128`.
    pub fn value_ceil(&self) -> Option<i128> {
        self.scaled_ceil(0)
    }

    /// The value in thousandths, rounded up (Kubernetes' `MilliValue()`): millicores for CPU.
    pub fn milli_value_ceil(&self) -> Option<i128> {
        self.scaled_ceil(3)
    }

    /// `value * 10^shift`, rounded up toward positive infinity.
    fn scaled_ceil(&self, shift: i32) -> Option<i128> {
        let scale = self.scale + shift;
        if scale >= 0 {
            10i128
                .checked_pow(scale as u32)
                .and_then(|p| self.mantissa.checked_mul(p))
        } else {
            let divisor = match 10i128.checked_pow((-scale) as u32) {
                Some(d) => d,
                None => return Some(if self.mantissa > 0 { 1 } else { 0 }),
            };
            let quotient = self.mantissa / divisor;
            if self.mantissa % divisor != 0 && self.mantissa > 0 {
                Some(quotient + 1)
            } else {
                Some(quotient)
            }
        }
    }

    /// True when the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// True when the quantity is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// A quantity of whole units, for building quantities in code.
    pub fn from_units(units: i128) -> Self {
        Self::normalized(units, 0).unwrap_or(Self {
            mantissa: units,
            scale: 0,
        })
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = |q: &Quantity| q.mantissa.signum();
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        if self.mantissa == 0 {
            return Ordering::Equal;
        }
        // Align both to the smaller scale; if that overflows, the larger magnitude is obvious.
        let common = self.scale.min(other.scale);
        let lift = |q: &Quantity| {
            10i128
                .checked_pow((q.scale - common) as u32)
                .and_then(|p| q.mantissa.checked_mul(p))
        };
        match (lift(self), lift(other)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (None, Some(_)) => sign_order(self.mantissa, Ordering::Greater),
            (Some(_), None) => sign_order(self.mantissa, Ordering::Less),
            (None, None) => {
                let magnitude = |q: &Quantity| digits(q.mantissa) as i32 + q.scale;
                let by_magnitude = magnitude(self).cmp(&magnitude(other));
                sign_order(self.mantissa, by_magnitude)
            }
        }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            write!(f, "{}", self.mantissa)
        } else {
            write!(f, "{}e{}", self.mantissa, self.scale)
        }
    }
}

fn sign_order(mantissa: i128, magnitude_order: Ordering) -> Ordering {
    if mantissa < 0 {
        magnitude_order.reverse()
    } else {
        magnitude_order
    }
}

fn digits(mut n: i128) -> u32 {
    let mut count = 1;
    while n.abs() >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// Parses `digits[.digits]` into an integer mantissa and a negative scale for the fraction.
fn parse_decimal(number: &str) -> Result<(i128, i32), QuantityError> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(QuantityError::Syntax);
    }
    let all_digits = whole.trim_start_matches('0').to_string() + fraction;
    let significant = all_digits.trim_start_matches('0');
    if significant.trim_end_matches('0').len() > MAX_DIGITS {
        return Err(QuantityError::TooPrecise);
    }
    let mut mantissa: i128 = 0;
    let mut trailing_zeros_dropped = 0i32;
    let kept = significant.trim_end_matches('0');
    trailing_zeros_dropped += (significant.len() - kept.len()) as i32;
    for b in kept.bytes() {
        mantissa = mantissa * 10 + i128::from(b - b'0');
    }
    let scale = trailing_zeros_dropped - fraction.len() as i32;
    Ok((mantissa, scale))
}

/// Returns (decimal exponent, binary power) for a suffix.
fn parse_suffix(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let known = match suffix {
        "" => Some((0, 0)),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        "n" => Some((-9, 0)),
        "u" => Some((-6, 0)),
        "m" => Some((-3, 0)),
        "k" => Some((3, 0)),
        "M" => Some((6, 0)),
        "G" => Some((9, 0)),
        "T" => Some((12, 0)),
        "P" => Some((15, 0)),
        "E" => Some((18, 0)),
        _ => None,
    };
    if let Some(k) = known {
        return Ok(k);
    }
    let exponent = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or_else(|| QuantityError::Suffix(suffix.to_string()))?;
    let digits = exponent
        .strip_prefix('-')
        .or_else(|| exponent.strip_prefix('+'))
        .unwrap_or(exponent);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Suffix(suffix.to_string()));
    }
    let value: i32 = exponent
        .parse()
        .map_err(|_| QuantityError::Suffix(suffix.to_string()))?;
    if value.abs() > MAX_EXPONENT {
        return Err(QuantityError::OutOfRange);
    }
    Ok((value, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn binary_suffixes_are_powers_of_two() {
        assert_eq!(q("1Ki").value_ceil(), Some(1024));
        assert_eq!(q("128Mi").value_ceil(), Some(128 << 20));
        assert_eq!(q("1.5Gi").value_ceil(), Some(3 << 29));
        assert_eq!(q("2Ei").value_ceil(), Some(2i128 << 60));
    }

    #[test]
    fn decimal_suffixes_and_exponents() {
        assert_eq!(q("1k").value_ceil(), Some(1000));
        assert_eq!(q("1M").value_ceil(), Some(1_000_000));
        assert_eq!(q("2e3").value_ceil(), Some(2000));
        assert_eq!(q("2E+3").value_ceil(), Some(2000));
        assert_eq!(q("15e-1").milli_value_ceil(), Some(1500));
        assert_eq!(q("500m").milli_value_ceil(), Some(500));
        assert_eq!(q("500m").value_ceil(), Some(1));
        assert_eq!(q("0.1").milli_value_ceil(), Some(100));
        assert_eq!(q(".5").milli_value_ceil(), Some(500));
        assert_eq!(q("1.").value_ceil(), Some(1));
        assert_eq!(q("100n").milli_value_ceil(), Some(1));
    }

    #[test]
    fn comparisons_are_exact() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1000m"), q("1"));
        assert!(q("1G") < q("1Gi"));
        assert!(q("-1") < q("0"));
        assert!(q("-2") < q("-1"));
        assert!(q("1E") > q("999P"));
        assert!(q("1e60") > q("1Ei"));
    }

    #[test]
    fn bad_quantities_are_refused() {
        for bad in [
            "", "12QB", "1..2", ".", "Mi", "1 Mi", "1e", "1e1000", "1Mi5", "--1", "1.2.3",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            Quantity::parse("12QB"),
            Err(QuantityError::Suffix("QB".into()))
        );
        assert_eq!(
            Quantity::parse(&"9".repeat(40)),
            Err(QuantityError::TooPrecise)
        );
    }

    #[test]
    fn negative_and_zero() {
        assert!(q("-1Mi").is_negative());
        assert!(q("0Gi").is_zero());
        assert_eq!(q("-500m").milli_value_ceil(), Some(-500));
    }
}
