//! Times for people: "3 minutes ago", "in 10 minutes". `--json` output keeps the raw values.

/// `t` (Unix seconds) relative to now: "just now", "42 seconds ago", "in 3 hours".
pub fn relative(t: f64) -> String {
    relative_to(t, now())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn relative_to(t: f64, now: f64) -> String {
    let d = t - now;
    let secs = d.abs().round() as u64;
    if secs < 2 {
        return "just now".into();
    }
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3_600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3_600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if d < 0.0 {
        format!("{n} {unit}{plural} ago")
    } else {
        format!("in {n} {unit}{plural}")
    }
}

#[cfg(test)]
mod tests {
    use super::relative_to;

    #[test]
    fn past_and_future() {
        let now = 1_000_000.0;
        assert_eq!(relative_to(now - 0.4, now), "just now");
        assert_eq!(relative_to(now - 42.0, now), "42 seconds ago");
        assert_eq!(relative_to(now - 60.0, now), "1 minute ago");
        assert_eq!(relative_to(now - 3.0 * 60.0 - 5.0, now), "3 minutes ago");
        assert_eq!(relative_to(now + 600.0, now), "in 10 minutes");
        assert_eq!(relative_to(now + 7_300.0, now), "in 2 hours");
        assert_eq!(relative_to(now - 86_400.0 * 3.0, now), "3 days ago");
    }
}
