//! The command-line parser of Firecracker v1.16.1 and its jailer (`utils::arg_parser`), with
//! both argument tables as their `--help` prints them, so the fakes refuse exactly what the
//! real binaries refuse:
//!
//! - every option is `--<name>`; a word that is not (`x`, `-i`) or an unknown name
//!   (`--bogus`, `--id=x`: the name would be `id=x`) is `UnexpectedArgument`;
//! - an option that takes a value takes the **next word**, which must not start with `--`
//!   (`MissingValue`); only multi-value options may repeat (`DuplicateArgument`);
//! - `--` ends the options: the rest goes to the jailed binary (jailer) or is ignored;
//! - `--help`/`-h` or `--version` anywhere among the options wins over everything else;
//! - then, in name order, required options must be present, `requires` and `forbids` hold.
//!
//! Firecracker reports a parse error as exit code 153, a log line on stdout and
//! `Error: ParseArguments(..)` on stderr; the jailer as exit code 1 and
//! `Failed to parse arguments: ..` plus `Error: ArgumentParsing(..)` on stderr.

use std::collections::BTreeMap;
use std::fmt;

/// The version whose parser and tables these are.
pub const VERSION: &str = "1.16.1";
/// Firecracker's exit code for a command-line error (`FcExitCode::ArgParsing`).
pub const FC_EXIT_ARG_PARSING: i32 = 153;

/// One option of a table.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    pub name: &'static str,
    pub takes_value: bool,
    pub multiple: bool,
    pub required: bool,
    pub default: Option<&'static str>,
    pub requires: Option<&'static str>,
    pub forbids: &'static [&'static str],
}

const fn flag(name: &'static str) -> Opt {
    Opt {
        name,
        takes_value: false,
        multiple: false,
        required: false,
        default: None,
        requires: None,
        forbids: &[],
    }
}

const fn value(name: &'static str) -> Opt {
    Opt {
        takes_value: true,
        ..flag(name)
    }
}

const fn multi(name: &'static str) -> Opt {
    Opt {
        multiple: true,
        ..value(name)
    }
}

const fn required(o: Opt) -> Opt {
    Opt {
        required: true,
        ..o
    }
}

const fn default(o: Opt, d: &'static str) -> Opt {
    Opt {
        default: Some(d),
        ..o
    }
}

/// `firecracker --help` of v1.16.1.
pub const FIRECRACKER: &[Opt] = &[
    default(value("api-sock"), "/run/firecracker.socket"),
    flag("boot-timer"),
    value("config-file"),
    value("describe-snapshot"),
    flag("enable-pci"),
    default(value("http-api-max-payload-size"), "51200"),
    default(value("id"), "anonymous-instance"),
    value("level"),
    value("log-path"),
    value("metadata"),
    value("metrics-path"),
    value("mmds-size-limit"),
    value("module"),
    Opt {
        requires: Some("config-file"),
        ..flag("no-api")
    },
    Opt {
        forbids: &["seccomp-filter"],
        ..flag("no-seccomp")
    },
    value("parent-cpu-time-us"),
    Opt {
        forbids: &["no-seccomp"],
        ..value("seccomp-filter")
    },
    flag("show-level"),
    flag("show-log-origin"),
    flag("snapshot-version"),
    value("start-time-cpu-us"),
    value("start-time-us"),
    flag("version"),
];

/// `jailer --help` of v1.16.1.
pub const JAILER: &[Opt] = &[
    multi("cgroup"),
    default(value("cgroup-version"), "1"),
    default(value("chroot-base-dir"), "/srv/jailer"),
    flag("daemonize"),
    required(value("exec-file")),
    required(value("gid")),
    required(value("id")),
    value("netns"),
    flag("new-pid-ns"),
    value("parent-cgroup"),
    multi("resource-limit"),
    required(value("uid")),
    flag("version"),
];

/// `UtilsArgParserError`: `Display` is the message, [`ParseError::debug`] the `{:?}` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Forbidden(String, String),
    Missing(String),
    MissingValue(String),
    Unexpected(String),
    Duplicate(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forbidden(a, b) => {
                write!(
                    f,
                    "Argument '{b}' cannot be used together with argument '{a}'."
                )
            }
            Self::Missing(a) => write!(f, "Argument '{a}' required, but not found."),
            Self::MissingValue(a) => {
                write!(
                    f,
                    "The argument '{a}' requires a value, but none was supplied."
                )
            }
            Self::Unexpected(a) => write!(
                f,
                "Found argument '{a}' which wasn't expected, or isn't valid in this context."
            ),
            Self::Duplicate(a) => write!(f, "The argument '{a}' was provided more than once."),
        }
    }
}

impl ParseError {
    /// The variant as `{:?}` prints it (`UnexpectedArgument("id=x")`).
    pub fn debug(&self) -> String {
        match self {
            Self::Forbidden(a, b) => format!("ForbiddenArgument({a:?}, {b:?})"),
            Self::Missing(a) => format!("MissingArgument({a:?})"),
            Self::MissingValue(a) => format!("MissingValue({a:?})"),
            Self::Unexpected(a) => format!("UnexpectedArgument({a:?})"),
            Self::Duplicate(a) => format!("DuplicateArgument({a:?})"),
        }
    }
}

/// What the user asked for.
#[derive(Debug)]
pub enum Parsed {
    Help,
    Version,
    Run(Args),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Flag,
    Single(String),
    Multiple(Vec<String>),
}

/// Parsed options (user values over defaults) and the words after `--`.
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<&'static str, Value>,
    defaults: BTreeMap<&'static str, &'static str>,
    pub extra: Vec<String>,
}

impl Args {
    pub fn single(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Value::Single(v)) => Some(v),
            Some(_) => None,
            None => self.defaults.get(name).copied(),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Flag))
    }

    pub fn multiple(&self, name: &str) -> &[String] {
        match self.values.get(name) {
            Some(Value::Multiple(v)) => v,
            _ => &[],
        }
    }

    /// Whether the user gave `name` (not just its default).
    pub fn given(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// Parses `argv` (program name first) against `table`.
pub fn parse(table: &'static [Opt], argv: &[String]) -> Result<Parsed, ParseError> {
    let words = argv.get(1..).unwrap_or_default();
    let (options, extra) = match words.iter().position(|w| w == "--") {
        Some(i) => (&words[..i], &words[i + 1..]),
        None => (words, &[][..]),
    };
    if options.iter().any(|w| w == "--help" || w == "-h") {
        return Ok(Parsed::Help);
    }
    if options.iter().any(|w| w == "--version") {
        return Ok(Parsed::Version);
    }
    let mut args = Args {
        extra: extra.to_vec(),
        defaults: table
            .iter()
            .filter_map(|o| o.default.map(|d| (o.name, d)))
            .collect(),
        ..Args::default()
    };
    let mut it = options.iter();
    while let Some(word) = it.next() {
        let Some(name) = word.strip_prefix("--") else {
            return Err(ParseError::Unexpected(word.clone()));
        };
        let opt = table
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| ParseError::Unexpected(name.to_string()))?;
        if !opt.multiple && args.values.contains_key(opt.name) {
            return Err(ParseError::Duplicate(name.to_string()));
        }
        let v = if opt.takes_value {
            let v = it
                .next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| ParseError::MissingValue(name.to_string()))?
                .clone();
            if opt.multiple {
                match args.values.remove(opt.name) {
                    Some(Value::Multiple(mut all)) => {
                        all.push(v);
                        Value::Multiple(all)
                    }
                    _ => Value::Multiple(vec![v]),
                }
            } else {
                Value::Single(v)
            }
        } else {
            Value::Flag
        };
        args.values.insert(opt.name, v);
    }
    // Name order, like the real parser's BTreeMap.
    let mut sorted: Vec<&Opt> = table.iter().collect();
    sorted.sort_by_key(|o| o.name);
    for o in sorted {
        if o.required && !args.given(o.name) {
            return Err(ParseError::Missing(o.name.into()));
        }
        if args.given(o.name) {
            if let Some(r) = o.requires {
                if !options.iter().any(|w| *w == format!("--{r}")) {
                    return Err(ParseError::Missing(r.into()));
                }
            }
            for f in o.forbids {
                if options.iter().any(|w| *w == format!("--{f}")) {
                    return Err(ParseError::Forbidden(o.name.into(), (*f).into()));
                }
            }
        }
    }
    Ok(Parsed::Run(args))
}

/// The option lines of `--help` (`  --name <name>   ...`), in the real layout minus the
/// descriptions.
pub fn help(table: &[Opt]) -> String {
    let line = |o: &Opt| {
        let mut l = if o.takes_value {
            format!("  --{0} <{0}>", o.name)
        } else {
            format!("  --{}", o.name)
        };
        if let Some(d) = o.default {
            l.push_str(&format!("   [default: \"{d}\"]"));
        }
        l
    };
    let mut out = Vec::new();
    let req: Vec<String> = table.iter().filter(|o| o.required).map(line).collect();
    if !req.is_empty() {
        out.push("required arguments:".to_string());
        out.extend(req);
        out.push(String::new());
    }
    out.push("optional arguments:".to_string());
    out.extend(table.iter().filter(|o| !o.required).map(line));
    out.push("  --help   Show the help message.".into());
    out.join("\n")
}

/// The options a real `--help` text lists: `(name, takes_value, default)`, in its order.
pub fn options_in_help(text: &str) -> Vec<(String, bool, Option<String>)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("  --")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let after = &rest[name.len()..];
            let takes_value = after.starts_with(&format!(" <{name}>"));
            let default = l
                .split_once("[default: \"")
                .and_then(|(_, d)| d.split_once("\"]"))
                .map(|(d, _)| d.to_string());
            Some((name, takes_value, default))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        std::iter::once("prog")
            .chain(s.split_whitespace())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn firecracker_grammar() {
        let run = |s: &str| match parse(FIRECRACKER, &argv(s)) {
            Ok(Parsed::Run(a)) => a,
            other => panic!("{s}: {other:?}"),
        };
        let a = run("--id vm-1 --api-sock /a.sock");
        assert_eq!(
            (a.single("id"), a.single("api-sock")),
            (Some("vm-1"), Some("/a.sock"))
        );
        assert_eq!(run("").single("id"), Some("anonymous-instance"));
        let err = |s: &str| parse(FIRECRACKER, &argv(s)).unwrap_err();
        assert_eq!(err("--id=vm-1"), ParseError::Unexpected("id=vm-1".into()));
        assert_eq!(err("--bogus"), ParseError::Unexpected("bogus".into()));
        assert_eq!(err("vm-1"), ParseError::Unexpected("vm-1".into()));
        assert_eq!(err("--id"), ParseError::MissingValue("id".into()));
        assert_eq!(
            err("--id --api-sock x"),
            ParseError::MissingValue("id".into())
        );
        assert_eq!(err("--id a --id b"), ParseError::Duplicate("id".into()));
        assert_eq!(err("--no-api"), ParseError::Missing("config-file".into()));
        assert_eq!(
            err("--no-seccomp --seccomp-filter f"),
            ParseError::Forbidden("no-seccomp".into(), "seccomp-filter".into())
        );
        assert!(matches!(
            parse(FIRECRACKER, &argv("--bogus --help")),
            Ok(Parsed::Help)
        ));
        // After `--` nothing is an option.
        assert_eq!(run("--id a -- --id=b").extra, ["--id=b"]);
        assert_eq!(
            err("--id=x").to_string(),
            "Found argument 'id=x' which wasn't expected, or isn't valid in this context."
        );
        assert_eq!(err("--id=x").debug(), r#"UnexpectedArgument("id=x")"#);
    }

    #[test]
    fn jailer_grammar() {
        let err = |s: &str| parse(JAILER, &argv(s)).unwrap_err();
        // The first missing required option in name order.
        assert_eq!(err(""), ParseError::Missing("exec-file".into()));
        assert_eq!(
            err("--exec-file f --uid 0 --gid 0"),
            ParseError::Missing("id".into())
        );
        let Ok(Parsed::Run(a)) = parse(
            JAILER,
            &argv(
                "--id a --exec-file f --uid 0 --gid 0 --cgroup x=1 --cgroup y=2 -- --api-sock /s",
            ),
        ) else {
            panic!()
        };
        assert_eq!(a.multiple("cgroup"), ["x=1", "y=2"]);
        assert_eq!(a.single("cgroup-version"), Some("1"));
        assert_eq!(a.extra, ["--api-sock", "/s"]);
    }

    #[test]
    fn help_round_trips_through_the_help_reader() {
        for table in [FIRECRACKER, JAILER] {
            let listed = options_in_help(&help(table));
            for o in table {
                assert!(
                    listed.contains(&(o.name.into(), o.takes_value, o.default.map(Into::into))),
                    "{}",
                    o.name
                );
            }
        }
    }
}
