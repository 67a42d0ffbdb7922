//! Parsers for the units ADTs write: Kubernetes CPU and memory quantities,
//! Prometheus durations. Each returns `None` for text it cannot read; the
//! caller turns that into a positioned diagnostic.

/// `"900m"` -> 900, `"1.5"` -> 1500, `"2"` -> 2000 millicores.
pub fn parse_cpu_millis(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(m) = text.strip_suffix('m') {
        return parse_plain_decimal(m).filter(|v| v.fract() == 0.0).map(|v| v as u64);
    }
    let cores = parse_plain_decimal(text)?;
    let millis = (cores * 1000.0).ceil();
    (millis <= u64::MAX as f64).then_some(millis as u64)
}

/// `"256Mi"`, `"1G"`, `"128974848"`, `"129e6"` -> bytes.
pub fn parse_memory_bytes(text: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((text, 1.0));
    let value = match parse_plain_decimal(number) {
        Some(v) => v,
        // Kubernetes also takes exponents: 129e6.
        None if factor == 1.0 => parse_exponent(number)?,
        None => return None,
    };
    let bytes = (value * factor).ceil();
    (bytes <= u64::MAX as f64).then_some(bytes as u64)
}

/// `"30s"`, `"1m"`, `"1h30m"`, `"500ms"`, `"2d"`, or plain seconds -> seconds
/// (rounded up, so `500ms` waits a whole second rather than none).
pub fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(v) = parse_plain_decimal(text) {
        return Some(v.ceil() as u64);
    }
    let mut total_ms: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let amount: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms += amount * unit_ms;
    }
    u64::try_from(total_ms.div_ceil(1000)).ok()
}

/// Digits with at most one dot, no sign, no exponent: what quantities allow.
fn parse_plain_decimal(text: &str) -> Option<f64> {
    let ok = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1
        && text.chars().any(|c| c.is_ascii_digit());
    ok.then(|| text.parse().ok()).flatten()
}

fn parse_exponent(text: &str) -> Option<f64> {
    let (mantissa, exp) = text.split_once(['e', 'E'])?;
    let mantissa = parse_plain_decimal(mantissa)?;
    let exp: i32 = exp.parse().ok()?;
    (0..=18).contains(&exp).then(|| mantissa * 10f64.powi(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("900m"), Some(900));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("12xb"), None);
        assert_eq!(parse_cpu_millis("-1"), None);
        assert_eq!(parse_cpu_millis("1.5m"), None);
        assert_eq!(parse_cpu_millis(""), None);
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory_bytes("256Mi"), Some(256 * 1024 * 1024));
        assert_eq!(parse_memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory_bytes("128974848"), Some(128974848));
        assert_eq!(parse_memory_bytes("129e6"), Some(129_000_000));
        assert_eq!(parse_memory_bytes("1.5Gi"), Some(1610612736));
        assert_eq!(parse_memory_bytes("256Mo"), None);
        assert_eq!(parse_memory_bytes("Mi"), None);
        assert_eq!(parse_memory_bytes("1e400"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_seconds("30s"), Some(30));
        assert_eq!(parse_duration_seconds("2m"), Some(120));
        assert_eq!(parse_duration_seconds("1h30m"), Some(5400));
        assert_eq!(parse_duration_seconds("500ms"), Some(1));
        assert_eq!(parse_duration_seconds("45"), Some(45));
        assert_eq!(parse_duration_seconds("3 fortnights"), None);
        assert_eq!(parse_duration_seconds("m"), None);
        assert_eq!(parse_duration_seconds("10x"), None);
    }
}
