//! How numbers, sizes, durations and times read on the pages. static/app.js formats live updates
//! with the same rules, so a value does not change its look when the script refreshes it.

/// A few significant digits; an exponent for very large or very small magnitudes.
pub fn num(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    // Round to `digits` significant digits, then print the shortest form of that value.
    let rounded: f64 = format!("{:.*e}", digits.saturating_sub(1), v)
        .parse()
        .unwrap_or(v);
    format!("{rounded}")
}

pub fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| num(v, 4))
}

pub fn opt_fixed(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

/// kNN accuracies are stored in percent.
pub fn opt_percent(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2} %"),
        _ => "—".into(),
    }
}

pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "—".into();
    }
    let s = seconds.round() as u64;
    if s < 60 {
        return format!("{s} s");
    }
    let m = s / 60;
    if m < 60 {
        return format!("{m} min {} s", s % 60);
    }
    let h = m / 60;
    if h < 48 {
        return format!("{h} h {} min", m % 60);
    }
    format!("{} d {} h", h / 24, h % 24)
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// "2026-11-29T02:57:03.123Z" → "2026-11-29 02:57:03 UTC" (the script shows local time).
pub fn short_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => rfc3339.to_string(),
    }
}

/// JSON placed inside `<script type="application/json">`: `<`, `>` and `&` are escaped so no
/// value (a run name, an error message) can close the element.
pub fn script_json(value: &serde_json::Value) -> String {
    serde_json::to_string(value)
        .expect("JSON values serialise")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(0.06, 4), "0.06");
        assert_eq!(num(1.234567, 4), "1.235");
        assert_eq!(num(1234.0, 4), "1234");
        assert_eq!(num(0.0001, 4), "1.00e-4");
        assert_eq!(num(0.0, 4), "0");
        assert_eq!(num(f64::NAN, 4), "—");
        assert_eq!(opt_num(None), "—");
    }

    #[test]
    fn durations_sizes_and_times_read_naturally() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(125.0), "2 min 5 s");
        assert_eq!(duration(3.0 * 3600.0 + 120.0), "3 h 2 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(
            short_time("2026-11-29T02:57:03.5+00:00"),
            "2026-11-29 02:57:03 UTC"
        );
        assert_eq!(short_time("not a time"), "not a time");
    }

    #[test]
    fn script_json_cannot_close_the_script_element() {
        let v = serde_json::json!({"name": "</script><b>&"});
        let s = script_json(&v);
        assert!(!s.contains("</"), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }
}
