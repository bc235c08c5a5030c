//! Figures with a fixed number of decimals, medians, ratios and their ranges.

use std::fmt;

use serde::{Serialize, Serializer};

/// A figure rounded to `decimals` places: it prints and serializes as written with them
/// (an integer in JSON when there are none), and later arithmetic uses the rounded value,
/// as the report's figures are read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fixed {
    value: f64,
    decimals: usize,
}

impl Fixed {
    pub fn new(value: f64, decimals: usize) -> Fixed {
        let value = format!("{value:.decimals$}").parse().unwrap_or(value);
        Fixed { value, decimals }
    }

    /// A whole number.
    pub fn int(value: u64) -> Fixed {
        Fixed {
            value: value as f64,
            decimals: 0,
        }
    }

    pub fn value(self) -> f64 {
        self.value
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{:.*}", self.decimals, self.value);
        f.pad(&s)
    }
}

impl Serialize for Fixed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.decimals == 0 {
            s.serialize_i64(self.value as i64)
        } else {
            s.serialize_f64(self.value)
        }
    }
}

/// An optional figure as the report prints it: `-` when missing.
pub fn or_dash(v: Option<impl fmt::Display>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The median (the mean of the middle two for an even count), with `decimals` places.
pub fn median(values: &[Fixed], decimals: usize) -> Option<Fixed> {
    let mut v: Vec<f64> = values.iter().map(|x| x.value).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Fixed::new(m, decimals))
}

/// The median of raw values (mdbench's rounds).
pub fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// a / b with `decimals` places; none if either is missing or b is not positive.
pub fn ratio(a: Option<Fixed>, b: Option<Fixed>, decimals: usize) -> Option<Fixed> {
    let (a, b) = (a?.value, b?.value);
    (b > 0.0).then(|| Fixed::new(a / b, decimals))
}

/// (a / b - 1) in %, with 2 places (results.json).
pub fn pct_num(a: Option<Fixed>, b: Option<Fixed>) -> Option<Fixed> {
    let (a, b) = (a?.value, b?.value);
    (b > 0.0).then(|| Fixed::new((a / b - 1.0) * 100.0, 2))
}

/// (a / b - 1) in %, signed, with one place and a `%` (the report).
pub fn pct(a: Option<Fixed>, b: Option<Fixed>) -> Option<String> {
    let (a, b) = (a?.value, b?.value);
    (b > 0.0).then(|| format!("{:+.1}%", (a / b - 1.0) * 100.0))
}

/// a - b, signed, with 2 places.
pub fn difference(a: Option<Fixed>, b: Option<Fixed>) -> Option<String> {
    Some(format!("{:+.2}", a?.value - b?.value))
}

/// The ratios of the values of the same round (4 places; 0 where b's is missing or not
/// positive); none if either list is empty.
pub fn round_ratios(a: &[Fixed], b: &[Fixed]) -> Option<Vec<Fixed>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    Some(
        a.iter()
            .enumerate()
            .map(|(i, x)| match b.get(i) {
                Some(y) if y.value > 0.0 => Fixed::new(x.value / y.value, 4),
                _ => Fixed::new(0.0, 4),
            })
            .collect(),
    )
}

/// `lowest-highest` with 2 places.
pub fn range_of(v: &[Fixed]) -> Option<String> {
    let lo = v.iter().map(|x| x.value).reduce(f64::min)?;
    let hi = v.iter().map(|x| x.value).reduce(f64::max)?;
    Some(format!("{lo:.2}-{hi:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[f64]) -> Vec<Fixed> {
        v.iter().map(|&x| Fixed::new(x, 1)).collect()
    }

    #[test]
    fn medians() {
        assert_eq!(median(&f(&[3.0, 1.0, 2.0]), 1).unwrap().to_string(), "2.0");
        assert_eq!(
            median(&f(&[4.0, 1.0, 2.0, 3.0]), 1).unwrap().to_string(),
            "2.5"
        );
        assert_eq!(median(&f(&[4.0, 1.0]), 0).unwrap().to_string(), "2");
        assert!(median(&[], 1).is_none());
        assert_eq!(median_f64(&mut [5.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn ratios_and_ranges() {
        let a = Some(Fixed::new(150.0, 1));
        let b = Some(Fixed::new(100.0, 1));
        assert_eq!(ratio(a, b, 3).unwrap().to_string(), "1.500");
        assert_eq!(ratio(a, Some(Fixed::new(0.0, 1)), 3), None);
        assert_eq!(pct(a, b).unwrap(), "+50.0%");
        assert_eq!(pct(b, a).unwrap(), "-33.3%");
        assert_eq!(difference(b, a).unwrap(), "-50.00");
        let r = round_ratios(&f(&[1.0, 2.0, 3.0]), &f(&[2.0, 2.0])).unwrap();
        assert_eq!(
            r.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            ["0.5000", "1.0000", "0.0000"]
        );
        assert_eq!(range_of(&r).unwrap(), "0.00-1.00");
        assert_eq!(serde_json::to_string(&Fixed::new(12.0, 0)).unwrap(), "12");
        assert_eq!(
            serde_json::to_string(&Fixed::new(12.24, 1)).unwrap(),
            "12.2"
        );
        assert_eq!(format!("{:>6}|", Fixed::new(1.0, 2)), "  1.00|");
    }
}
