//! Units users type: sizes such as `64M`, parsed once here for every layer that takes them
//! (mount options, fault rule ranges), so that no lower module depends on the command line.

/// Parses a size such as `4096`, `64K`, `1.5G` or `2GiB` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in size {s:?} (use K, M, G or T)"
            ));
        }
    };
    let not_a_size = || format!("{s:?} is not a size (example: 64M)");
    let too_large = || {
        format!(
            "size {s:?} is too large: at most {} bytes (16 EiB - 1)",
            u64::MAX
        )
    };
    // Whole numbers exactly, in integers: as a float, 2^64 would round to u64::MAX and pass.
    let bytes = if num.contains('.') {
        let n: f64 = num.parse().map_err(|_| not_a_size())?;
        let bytes = n * mult as f64;
        // u64::MAX as f64 is 2^64 itself: only smaller values fit.
        if bytes >= u64::MAX as f64 {
            return Err(too_large());
        }
        bytes as u64
    } else {
        let n: u128 = num.parse().map_err(|e: std::num::ParseIntError| {
            if *e.kind() == std::num::IntErrorKind::PosOverflow {
                too_large()
            } else {
                not_a_size()
            }
        })?;
        u64::try_from(n * u128::from(mult)).map_err(|_| too_large())?
    };
    if bytes == 0 {
        return Err(format!("size {s:?} is out of range: at least 1 byte"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_errors_name_the_input() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("\"Q\""));
        assert!(parse_size("lots").unwrap_err().contains("lots"));
        assert!(parse_size("0").is_err());
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        for big in [
            "18446744073709551616",
            "16777216T",
            "99999999999999999999999999999999999999999",
        ] {
            assert!(parse_size(big).unwrap_err().contains("too large"), "{big}");
        }
        assert!(parse_size("1..2").unwrap_err().contains("not a size"));
    }
}
