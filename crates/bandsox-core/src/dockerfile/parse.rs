//! The Dockerfile language bandsox builds: stages (`FROM … AS name`, `FROM scratch`),
//! `ARG` with build arguments, `RUN`, `COPY`/`ADD` (with `--from`, `--chown`, `--chmod`),
//! `ENV`, `WORKDIR`, `USER`, `CMD`, `ENTRYPOINT`, `EXPOSE`, `LABEL`, `SHELL`. Variables are
//! substituted here, so the builder sees final values.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{CoreError, Result};
use crate::images;

/// Largest Dockerfile accepted.
pub const MAX_DOCKERFILE_BYTES: usize = 256 << 10;

/// A parsed Dockerfile: its stages in order (the last one is the image built).
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub base: Base,
    /// The `AS` name, lower case.
    pub name: Option<String>,
    pub steps: Vec<Step>,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    /// An image reference (pulled on demand).
    Image(String),
    /// The result of an earlier stage (its index).
    Stage(usize),
    /// An empty tree: no shell, so no `RUN`.
    Scratch,
}

/// One instruction after `FROM`, with variables already substituted.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Program and arguments (shell form is wrapped in the current `SHELL`).
    Run(Vec<String>),
    /// A build argument: in the environment of later `RUN`s, not in the image.
    Arg(String, String),
    Env(String, String),
    Workdir(String),
    User(String),
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Expose(String),
    Label(String, String),
    Copy(Copy),
}

/// `COPY` or `ADD`.
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// `ADD`: local tar archives are unpacked at the destination.
    pub add: bool,
    /// `--from`: an earlier stage instead of the build context.
    pub from: Option<usize>,
    pub sources: Vec<String>,
    pub dest: String,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=` (octal).
    pub chmod: Option<u32>,
}

impl Dockerfile {
    /// Parses a Dockerfile without build arguments.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_with(text, &BTreeMap::new())
    }

    /// Parses a Dockerfile; `build_args` override the defaults of the `ARG`s it declares.
    pub fn parse_with(text: &str, build_args: &BTreeMap<String, String>) -> Result<Self> {
        if text.len() > MAX_DOCKERFILE_BYTES {
            return Err(bad(format!(
                "the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes"
            )));
        }
        let mut stages: Vec<Stage> = Vec::new();
        // ARGs declared before the first FROM: usable in FROM lines, and re-declarable
        // (without a value) inside a stage.
        let mut global: BTreeMap<String, String> = BTreeMap::new();
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut shell = default_shell();
        for (line_no, line) in logical_lines(text) {
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let rest = rest.trim();
            let at = |msg: String| bad(format!("line {line_no}: {msg}"));
            let instr = word.to_ascii_uppercase();
            if stages.is_empty() && instr != "FROM" && instr != "ARG" {
                return Err(at(format!("`{word}` before FROM")));
            }
            if instr == "FROM" {
                let stage = parse_from(rest, &global, &stages).map_err(at)?;
                stages.push(stage);
                vars.clear();
                shell = default_shell();
                continue;
            }
            if instr == "ARG" {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                check_name(k).map_err(at)?;
                let scope = if stages.is_empty() { &global } else { &vars };
                let value = match build_args.get(k) {
                    Some(given) => given.clone(),
                    None if rest.contains('=') => substitute(&unquote(v), scope),
                    // An ARG without a default keeps the global or an earlier value.
                    None => vars
                        .get(k)
                        .or_else(|| global.get(k))
                        .cloned()
                        .unwrap_or_default(),
                };
                match stages.last_mut() {
                    None => {
                        global.insert(k.to_owned(), value);
                    }
                    Some(stage) => {
                        vars.insert(k.to_owned(), value.clone());
                        stage.steps.push(Step::Arg(k.to_owned(), value));
                    }
                }
                continue;
            }
            let names = names_of(&stages);
            let Some(stage) = stages.last_mut() else {
                unreachable!("checked above: instructions other than ARG come after FROM")
            };
            match instr.as_str() {
                "RUN" => {
                    let argv = exec_form(rest, &shell);
                    if rest.is_empty() || argv.is_empty() {
                        return Err(at("RUN needs a command".into()));
                    }
                    if stage.base == Base::Scratch {
                        return Err(at(
                            "RUN in a FROM scratch stage: there is no shell to run it; \
                             start the stage from an image"
                                .into(),
                        ));
                    }
                    stage.steps.push(Step::Run(argv));
                }
                "ENV" => {
                    for (k, v) in key_values(rest).map_err(at)? {
                        let v = substitute(&v, &vars);
                        vars.insert(k.clone(), v.clone());
                        stage.steps.push(Step::Env(k, v));
                    }
                }
                "LABEL" => {
                    for (k, v) in key_values(rest).map_err(at)? {
                        stage.steps.push(Step::Label(k, substitute(&v, &vars)));
                    }
                }
                "WORKDIR" => {
                    let dir = substitute(&unquote(rest), &vars);
                    if dir.is_empty() || dir.contains('\0') {
                        return Err(at("WORKDIR needs a path".into()));
                    }
                    stage.steps.push(Step::Workdir(dir));
                }
                "USER" => {
                    let user = substitute(rest, &vars);
                    if user.is_empty() || user.contains(char::is_whitespace) {
                        return Err(at("USER needs one user name or uid".into()));
                    }
                    stage.steps.push(Step::User(user));
                }
                "CMD" | "ENTRYPOINT" => {
                    let argv = exec_form(rest, &shell);
                    stage.steps.push(if instr == "CMD" {
                        Step::Cmd(argv)
                    } else {
                        Step::Entrypoint(argv)
                    });
                }
                "EXPOSE" => {
                    for p in rest.split_whitespace() {
                        let p = substitute(p, &vars);
                        let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                        if port.parse::<u16>().map_or(true, |n| n == 0)
                            || !matches!(proto, "tcp" | "udp" | "sctp")
                        {
                            return Err(at(format!("EXPOSE: `{p}` is not a port")));
                        }
                        stage.steps.push(Step::Expose(format!("{port}/{proto}")));
                    }
                }
                "SHELL" => {
                    shell = json_array(rest)
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| at("SHELL needs a JSON array".into()))?;
                }
                "COPY" | "ADD" => {
                    let copy = parse_copy(instr == "ADD", rest, &vars, &names).map_err(at)?;
                    stage.steps.push(Step::Copy(copy));
                }
                // Accepted and without effect on a VM image.
                "VOLUME" | "STOPSIGNAL" | "HEALTHCHECK" | "MAINTAINER" => {}
                "ONBUILD" => return Err(at("ONBUILD is not supported".into())),
                _ => return Err(at(format!("unknown instruction `{word}`"))),
            }
        }
        if stages.is_empty() {
            return Err(bad("the Dockerfile has no FROM".into()));
        }
        Ok(Self { stages })
    }

    /// The stage the image is made of.
    pub fn last(&self) -> &Stage {
        self.stages
            .last()
            .expect("parse refuses a Dockerfile without FROM")
    }

    /// Indexes of the stages the last one needs (through `FROM <stage>` and `COPY --from`),
    /// itself included, in build order. Other stages are not built.
    pub fn needed(&self) -> Vec<usize> {
        let mut need = vec![false; self.stages.len()];
        need[self.stages.len() - 1] = true;
        for i in (0..self.stages.len()).rev() {
            if !need[i] {
                continue;
            }
            let s = &self.stages[i];
            if let Base::Stage(j) = s.base {
                need[j] = true;
            }
            for step in &s.steps {
                if let Step::Copy(Copy { from: Some(j), .. }) = step {
                    need[*j] = true;
                }
            }
        }
        (0..need.len()).filter(|i| need[*i]).collect()
    }
}

impl Stage {
    /// The runtime config of the stage's result: `base` changed by its instructions.
    pub fn config(&self, base: &Value) -> Value {
        let mut c = if base.is_object() {
            base.clone()
        } else {
            json!({})
        };
        let mut env = images::image_env(base);
        for step in &self.steps {
            match step {
                Step::Env(k, v) => {
                    env.insert(k.clone(), v.clone());
                }
                Step::Workdir(d) => {
                    c["WorkingDir"] = json!(resolve_dir(c["WorkingDir"].as_str(), d));
                }
                Step::User(u) => c["User"] = json!(u),
                Step::Cmd(a) => c["Cmd"] = json!(a),
                Step::Entrypoint(a) => {
                    c["Entrypoint"] = json!(a);
                    // As Docker does: a new ENTRYPOINT drops the base image's CMD.
                    c["Cmd"] = Value::Null;
                }
                Step::Expose(p) => {
                    if !c["ExposedPorts"].is_object() {
                        c["ExposedPorts"] = json!({});
                    }
                    c["ExposedPorts"][p] = json!({});
                }
                Step::Label(k, v) => {
                    if !c["Labels"].is_object() {
                        c["Labels"] = json!({});
                    }
                    c["Labels"][k] = json!(v);
                }
                Step::Run(_) | Step::Arg(..) | Step::Copy(_) => {}
            }
        }
        c["Env"] = json!(env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>());
        c
    }
}

fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned()]
}

/// `FROM [--platform=…] image [AS name]`.
fn parse_from(
    rest: &str,
    global: &BTreeMap<String, String>,
    stages: &[Stage],
) -> std::result::Result<Stage, String> {
    let words: Vec<&str> = rest
        .split_whitespace()
        .filter(|p| !p.starts_with("--"))
        .collect();
    let (image, name) = match words.as_slice() {
        [image] => (*image, None),
        [image, kw, name] if kw.eq_ignore_ascii_case("as") => (*image, Some(*name)),
        [] => return Err("FROM needs an image".into()),
        _ => return Err("FROM takes an image and an optional `AS name`".into()),
    };
    let name = name.map(str::to_ascii_lowercase);
    if let Some(n) = &name {
        let ok = n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!("`{n}` is not a valid stage name"));
        }
        if stages.iter().any(|s| s.name.as_deref() == Some(n)) {
            return Err(format!("two stages are named `{n}`"));
        }
    }
    let image = substitute(image, global);
    let base = if image.eq_ignore_ascii_case("scratch") {
        Base::Scratch
    } else if let Some(i) = stage_index(&image, &names_of(stages)) {
        Base::Stage(i)
    } else {
        Base::Image(image)
    };
    Ok(Stage {
        base,
        name,
        steps: Vec::new(),
    })
}

fn names_of(stages: &[Stage]) -> Vec<Option<String>> {
    stages.iter().map(|s| s.name.clone()).collect()
}

/// An earlier stage by name (any case) or by number.
fn stage_index(word: &str, names: &[Option<String>]) -> Option<usize> {
    let lower = word.to_ascii_lowercase();
    names
        .iter()
        .position(|n| n.as_deref() == Some(lower.as_str()))
}

/// `COPY [--from=…] [--chown=…] [--chmod=…] src… dest`, also in the JSON form.
fn parse_copy(
    add: bool,
    rest: &str,
    vars: &BTreeMap<String, String>,
    names: &[Option<String>],
) -> std::result::Result<Copy, String> {
    let instr = if add { "ADD" } else { "COPY" };
    let mut copy = Copy {
        add,
        from: None,
        sources: Vec::new(),
        dest: String::new(),
        chown: None,
        chmod: None,
    };
    let mut rest = rest.trim_start();
    while let Some(flag) = rest.strip_prefix("--") {
        let (word, tail) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        rest = tail.trim_start();
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let value = substitute(value, vars);
        match key {
            "from" => {
                // Earlier stages only: the last name is the stage being parsed.
                let earlier = &names[..names.len().saturating_sub(1)];
                let i = stage_index(&value, earlier)
                    .or_else(|| value.parse::<usize>().ok().filter(|i| *i < earlier.len()));
                copy.from = Some(i.ok_or_else(|| {
                    format!(
                        "{instr} --from=`{value}` names no earlier stage (copying from an \
                         image: add a stage `FROM {value} AS name` and use --from=name)"
                    )
                })?);
            }
            "chown" if !value.is_empty() => copy.chown = Some(value),
            "chmod" => {
                copy.chmod = Some(
                    u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("{instr} --chmod=`{value}` is not an octal mode"))?,
                );
            }
            "link" => {}
            _ => return Err(format!("{instr}: unknown flag `--{word}`")),
        }
    }
    let mut words = match json_array(rest) {
        Some(w) => w,
        None => split_words(rest)?,
    };
    words.iter_mut().for_each(|w| *w = substitute(w, vars));
    if words.len() < 2 {
        return Err(format!("{instr} needs a source and a destination"));
    }
    copy.dest = words.pop().unwrap_or_default();
    if copy.dest.contains('\0') || words.iter().any(|w| w.contains('\0') || w.is_empty()) {
        return Err(format!("{instr}: a path is empty or holds a NUL"));
    }
    if add {
        if let Some(url) = words
            .iter()
            .find(|w| w.contains("://") || w.starts_with("git@"))
        {
            return Err(format!(
                "ADD `{url}`: the build does not fetch URLs (guests have no network and the \
                 server must not fetch for them); download it into the context, or RUN a \
                 download in a build that has network"
            ));
        }
    }
    copy.sources = words;
    Ok(copy)
}

pub(super) fn bad(msg: String) -> CoreError {
    CoreError::InvalidInput(msg)
}

/// `WORKDIR` relative to the current one, as Docker resolves it.
pub(super) fn resolve_dir(current: Option<&str>, dir: &str) -> String {
    if dir.starts_with('/') {
        return dir.to_owned();
    }
    let cur = current.filter(|s| !s.is_empty()).unwrap_or("/");
    format!("{}/{dir}", cur.trim_end_matches('/'))
}

/// Lines joined over `\` continuations, without comments and blank lines, with line numbers.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
            continue;
        }
        if cur.is_empty() {
            start = i + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push((start, std::mem::take(&mut cur).trim().to_owned()));
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push((start, cur.trim().to_owned()));
    }
    out
}

/// The argv of `RUN`/`CMD`/`ENTRYPOINT`: the exec form `["a", "b"]`, else the text run by
/// the current `SHELL`.
fn exec_form(s: &str, shell: &[String]) -> Vec<String> {
    json_array(s).unwrap_or_else(|| shell.iter().cloned().chain([s.to_owned()]).collect())
}

/// The exec form `["a", "b"]`, if `s` is one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str(s).ok()
}

fn check_name(k: &str) -> std::result::Result<(), String> {
    let starts_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    if !starts_ok || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{k}` is not a valid variable name"));
    }
    Ok(())
}

/// `k=v k2="v 2"` pairs, or the legacy one-pair form `k v w`.
fn key_values(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let first = s.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        check_name(k)?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    let mut out = Vec::new();
    for word in split_words(s)? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        check_name(k.trim_matches('"'))?;
        out.push((k.trim_matches('"').to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Splits on whitespace outside double quotes, removing the quotes and `\` escapes.
fn split_words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' => {
                cur.extend(chars.next());
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
        .to_owned()
}

/// `$NAME` and `${NAME}` from build arguments and earlier `ENV`s; unknown names become empty.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => (inner, after.len()),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(vars.get(name).map(String::as_str).unwrap_or_default());
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(text: &str) -> Stage {
        let mut f = Dockerfile::parse(text).unwrap();
        assert_eq!(f.stages.len(), 1);
        f.stages.pop().unwrap()
    }

    #[test]
    fn parses_the_supported_instructions() {
        let s = one(
            "# comment\nARG BASE=bandsox/busybox\nFROM ${BASE} AS build\nARG GREETING_WORD=hi\n\
             ENV A=1 B=\"two words\"\nENV LEGACY some value\nWORKDIR /app\nWORKDIR sub\n\
             RUN echo $A && \\\n    echo done\nRUN [\"/bin/echo\", \"hi\"]\nUSER nobody\n\
             EXPOSE 8080 53/udp\nLABEL k=v\nCMD [\"sh\"]\n",
        );
        assert_eq!(s.base, Base::Image("bandsox/busybox".into()));
        assert_eq!(s.name.as_deref(), Some("build"));
        assert_eq!(
            s.steps,
            vec![
                Step::Arg("GREETING_WORD".into(), "hi".into()),
                Step::Env("A".into(), "1".into()),
                Step::Env("B".into(), "two words".into()),
                Step::Env("LEGACY".into(), "some value".into()),
                Step::Workdir("/app".into()),
                Step::Workdir("sub".into()),
                Step::Run(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $A &&  echo done".into()
                ]),
                Step::Run(vec!["/bin/echo".into(), "hi".into()]),
                Step::User("nobody".into()),
                Step::Expose("8080/tcp".into()),
                Step::Expose("53/udp".into()),
                Step::Label("k".into(), "v".into()),
                Step::Cmd(vec!["sh".into()]),
            ]
        );
        let c = s.config(&json!({"Env": ["PATH=/bin", "A=0"], "Cmd": ["old"]}));
        assert_eq!(
            c["Env"],
            json!(["A=1", "B=two words", "LEGACY=some value", "PATH=/bin"])
        );
        assert_eq!(c["WorkingDir"], "/app/sub");
        assert_eq!(c["User"], "nobody");
        assert_eq!(c["Cmd"], json!(["sh"]));
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}, "53/udp": {}}));
        assert_eq!(c["Labels"], json!({"k": "v"}));
    }

    #[test]
    fn stages_copy_and_build_args() {
        let text = "ARG V=1\nFROM img:$V AS Build\nARG WHO=world\nRUN echo $WHO\n\
                    FROM scratch AS unused\nCOPY a /a\n\
                    FROM build\nARG V\nCOPY --from=build --chown=1:2 --chmod=755 /out \"/dst dir/\"\n\
                    COPY [\"x y\", \"z\", \"/d/\"]\nADD ctx.tar.gz /opt/\n";
        let args = BTreeMap::from([("WHO".to_owned(), "you".to_owned())]);
        let f = Dockerfile::parse_with(text, &args).unwrap();
        assert_eq!(f.stages.len(), 3);
        assert_eq!(f.stages[0].base, Base::Image("img:1".into()));
        assert_eq!(f.stages[0].steps[0], Step::Arg("WHO".into(), "you".into()));
        assert_eq!(f.stages[1].base, Base::Scratch);
        assert_eq!(f.stages[2].base, Base::Stage(0));
        // A re-declared global ARG keeps its value.
        assert_eq!(f.stages[2].steps[0], Step::Arg("V".into(), "1".into()));
        assert_eq!(
            f.stages[2].steps[1],
            Step::Copy(Copy {
                add: false,
                from: Some(0),
                sources: vec!["/out".into()],
                dest: "/dst dir/".into(),
                chown: Some("1:2".into()),
                chmod: Some(0o755),
            })
        );
        let Step::Copy(c) = &f.stages[2].steps[2] else {
            panic!("not a COPY")
        };
        assert_eq!(c.sources, vec!["x y".to_owned(), "z".to_owned()]);
        assert_eq!(c.dest, "/d/");
        let Step::Copy(c) = &f.stages[2].steps[3] else {
            panic!("not an ADD")
        };
        assert!(c.add);
        // Only what the last stage needs is built.
        assert_eq!(f.needed(), vec![0, 2]);
        assert_eq!(
            Dockerfile::parse("FROM a\nFROM b").unwrap().needed(),
            vec![1]
        );
        let by_number = Dockerfile::parse("FROM a\nRUN x\nFROM b\nCOPY --from=0 /x /y").unwrap();
        assert_eq!(by_number.needed(), vec![0, 1]);
    }

    #[test]
    fn refuses_what_it_cannot_build() {
        for (text, needle) in [
            ("RUN true", "before FROM"),
            ("FROM scratch\nRUN true", "no shell"),
            ("FROM a\nADD http://x /y", "does not fetch URLs"),
            ("FROM a\nCOPY x", "a source and a destination"),
            ("FROM a\nCOPY --from=nope /x /y", "no earlier stage"),
            ("FROM a AS s\nCOPY --from=s /x /y", "no earlier stage"),
            ("FROM a\nCOPY --from=0 /x /y", "no earlier stage"),
            ("FROM a\nCOPY --chmod=999 x /y", "octal"),
            ("FROM a\nCOPY --frobnicate x /y", "unknown flag"),
            ("FROM a AS x\nFROM b AS x", "two stages"),
            ("FROM a AS 1x", "not a valid stage name"),
            ("FROM a\nFROBNICATE", "unknown instruction"),
            ("FROM a\nEXPOSE 0", "not a port"),
            ("FROM a\nEXPOSE 70000", "not a port"),
            ("FROM a\nENV 1x=2", "not a valid variable"),
            ("FROM a\nENV A=\"open", "unterminated"),
            ("# nothing", "no FROM"),
        ] {
            let e = Dockerfile::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let huge = format!("FROM a\nRUN {}", "x".repeat(MAX_DOCKERFILE_BYTES));
        assert!(Dockerfile::parse(&huge).is_err());
    }

    #[test]
    fn entrypoint_drops_the_base_cmd() {
        let s = one("FROM a\nENTRYPOINT [\"/x\"]");
        let c = s.config(&json!({"Cmd": ["sh"]}));
        assert_eq!(c["Entrypoint"], json!(["/x"]));
        assert!(c["Cmd"].is_null());
    }
}
