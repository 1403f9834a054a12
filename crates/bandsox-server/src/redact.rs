//! Which environment values the API never shows (`<redacted>`): those whose names say they
//! are secret, and those that look like one whatever their name (a URL with a password, a
//! token with a well-known prefix, a long random string). The guest still gets them.

/// True when `name=value` must not be shown.
pub(crate) fn is_secret(name: &str, value: &str) -> bool {
    secret_name(name) || secret_value(value)
}

fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "KEY",
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "_PAT",
        "PRIVATE",
        "SESSION",
        "COOKIE",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Prefixes of well-known token formats (GitHub, GitLab, OpenAI/Stripe-style, Slack, AWS,
/// Google, npm, Hugging Face).
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "sk-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "AKIA",
    "ASIA",
    "AIza",
    "npm_",
    "hf_",
];

fn secret_value(value: &str) -> bool {
    url_with_password(value)
        || words(value).any(|w| {
            TOKEN_PREFIXES
                .iter()
                .any(|p| w.len() >= p.len() + 12 && w.starts_with(p))
                || random_looking(w)
        })
        || value
            .trim_start()
            .get(..7)
            .is_some_and(|b| b.eq_ignore_ascii_case("bearer "))
}

/// Words of a value: runs of characters a token or key can hold.
fn words(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-.".contains(c)))
        .filter(|w| !w.is_empty())
}

/// `scheme://user:password@host...` (anywhere in the value: `-e`-style lists hold several).
fn url_with_password(value: &str) -> bool {
    value.match_indices("://").any(|(i, _)| {
        let rest = &value[i + 3..];
        let authority = &rest[..rest.find(['/', '?', '#', ' ']).unwrap_or(rest.len())];
        authority
            .rfind('@')
            .is_some_and(|at| authority[..at].contains(':'))
    })
}

/// At least 32 characters of mixed letters and digits with no word-like structure: a key, a
/// hex digest-sized secret or base64 material. Paths, versions and dotted names are not.
fn random_looking(w: &str) -> bool {
    if w.len() < 32
        || w.starts_with('/')
        || w.matches('.').count() > 1
        || w.matches('/').count() > 2
    {
        return false;
    }
    let digits = w.chars().filter(char::is_ascii_digit).count();
    let upper = w.chars().any(|c| c.is_ascii_uppercase());
    let lower = w.chars().any(|c| c.is_ascii_lowercase());
    // Hex and other digit-rich material, or mixed-case base64 with a digit.
    if !((digits >= 4 && (upper || lower)) || (digits >= 1 && upper && lower)) {
        return false;
    }
    entropy(w) >= 3.5
}

/// Shannon entropy of the characters of `w`, in bits per character.
fn entropy(w: &str) -> f64 {
    let mut counts = [0u32; 128];
    let mut n = 0u32;
    for b in w.bytes().filter(u8::is_ascii) {
        counts[b as usize] += 1;
        n += 1;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / f64::from(n);
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_by_name() {
        for n in [
            "API_KEY",
            "db_password",
            "GITHUB_PAT",
            "AUTH_HEADER",
            "aws_secret",
        ] {
            assert!(is_secret(n, "x"), "{n}");
        }
        assert!(!is_secret("GREETING", "hello"));
    }

    #[test]
    fn secrets_by_value() {
        for v in [
            "postgres://u:pass@db.example:5432/app",
            "redis://:hunter2@cache:6379",
            "https://user:tok@github.com/org/repo.git",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz",
            "sk-proj-abcdefghijklmnop1234",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-123456789012-abcdefghij",
            "Bearer abc.def.ghi",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "dGhpcyBpcyBhIHNlY3JldCB2YWx1ZSAxMjM0NTY3ODkw",
        ] {
            assert!(is_secret("CONFIG", v), "{v}");
        }
    }

    #[test]
    fn ordinary_values_are_shown() {
        for v in [
            "hello",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/usr/lib/python3.11/site-packages/something-2024",
            "https://github.com/org/repo.git",
            "ssh://git@github.com/org/repo",
            "postgres://db.example:5432/app",
            "en_US.UTF-8",
            "1.2.3-alpha.4+build.5678",
            "production",
            "skip-this-test-please",
            "com.example.service.v2.HandlerFactory",
            "0",
        ] {
            assert!(!is_secret("CONFIG", v), "{v}");
        }
    }
}
