//! Sizes as users write them: `512M`, `1.5G`, `4096`.

/// A size string that does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Empty, or not a number with an optional K/M/G/T suffix.
    #[error("'{0}' is not a size (a number with an optional K, M, G or T suffix)")]
    Syntax(String),
    /// Too large for 64 bits.
    #[error("'{0}' is too large")]
    Overflow(String),
}

/// Parses a size such as `512M`, `1.5G`, `4096` (bytes), `2k`: a decimal
/// number, optionally with a fraction, and an optional binary suffix
/// K, M, G or T (case-insensitive, an optional trailing `B` allowed).
/// A fractional result is rounded down to a whole byte.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax(text.to_string());
    let trimmed = text.trim();
    let body = trimmed.strip_suffix(['b', 'B']).unwrap_or(trimmed);
    let (number, shift) = match body.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(syntax()),
            };
            (&body[..body.len() - 1], shift)
        }
        _ if body.len() != trimmed.len() => return Err(syntax()), // a bare "B" suffix
        _ => (body, 0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || (number.contains('.') && fraction.is_empty())
    {
        return Err(syntax());
    }
    let overflow = || SizeError::Overflow(text.to_string());
    let whole: u64 = whole.parse().map_err(|_| overflow())?;
    let mut value = whole
        .checked_shl(shift)
        .filter(|v| v >> shift == whole)
        .ok_or_else(overflow)?;
    if !fraction.is_empty() {
        // Keep at most 9 fractional digits; finer than that is below a byte.
        let fraction = &fraction[..fraction.len().min(9)];
        let numerator: u128 = fraction.parse().map_err(|_| syntax())?;
        let denominator = 10u128.pow(fraction.len() as u32);
        let extra = (numerator << shift) / denominator;
        value = value.checked_add(extra as u64).ok_or_else(overflow)?;
    }
    Ok(value)
}
