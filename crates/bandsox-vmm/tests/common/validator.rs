//! Validates API requests against Firecracker's Swagger 2.0 spec (`firecracker-api.yaml`):
//! the method and path must exist, and the body must match the referenced definition
//! (required fields, types, enums, bounds, no unknown properties).

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

pub struct ApiSpec {
    root: Yaml,
}

impl ApiSpec {
    /// The copy of the spec kept next to the tests.
    pub fn load() -> Self {
        // Also used by bandsox-core's tests, hence the path through `crates/`.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bandsox-vmm/tests/firecracker-api.yaml"
        );
        let text = std::fs::read_to_string(path).expect("read firecracker-api.yaml");
        let root: Yaml = serde_yaml_ng::from_str(&text).expect("parse firecracker-api.yaml");
        assert_eq!(root["swagger"].as_str(), Some("2.0"));
        Self { root }
    }

    pub fn version(&self) -> &str {
        self.root["info"]["version"].as_str().unwrap_or("?")
    }

    /// Checks one request; `Err` says what is wrong.
    pub fn validate(&self, method: &str, path: &str, body: Option<&Json>) -> Result<(), String> {
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.root["paths"].as_mapping().ok_or("spec has no paths")?;
        let (template, item) = paths
            .iter()
            .find_map(|(k, v)| {
                let t = k.as_str()?;
                template_matches(t, path).then_some((t, v))
            })
            .ok_or_else(|| format!("path {path} is not in the API spec"))?;
        let op = item
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("{method} {template} is not in the API spec"))?;
        let params: Vec<&Yaml> = [item.get("parameters"), op.get("parameters")]
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_sequence())
            .flatten()
            .collect();
        let body_param = params.iter().find(|p| p["in"].as_str() == Some("body"));
        match (body_param, body) {
            (None, Some(_)) => return Err(format!("{method} {template} takes no body")),
            (Some(p), None) if p["required"].as_bool() == Some(true) => {
                return Err(format!("{method} {template} requires a body"))
            }
            (Some(p), Some(b)) => self.check(&p["schema"], b, "body")?,
            _ => {}
        }
        // A path parameter repeated in the body must agree (Firecracker checks this).
        if let Some(b) = body.and_then(|b| b.as_object()) {
            for (seg_t, seg) in template.split('/').zip(path.split('/')) {
                if let Some(name) = seg_t.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if let Some(v) = b.get(name) {
                        if v.as_str() != Some(seg) {
                            return Err(format!("body {name} {v} differs from the path's `{seg}`"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn resolve<'a>(&'a self, schema: &'a Yaml) -> Result<&'a Yaml, String> {
        match schema.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/definitions/")
                    .ok_or_else(|| format!("unsupported $ref {r}"))?;
                let def = self
                    .root
                    .get("definitions")
                    .and_then(|d| d.get(name))
                    .ok_or_else(|| format!("missing definition {name}"))?;
                self.resolve(def)
            }
            None => Ok(schema),
        }
    }

    fn check(&self, schema: &Yaml, v: &Json, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if let Some(allowed) = schema.get("enum").and_then(|e| e.as_sequence()) {
            if !allowed.iter().any(|a| yaml_eq(a, v)) {
                return Err(format!("{at}: {v} is not one of {allowed:?}"));
            }
        }
        let ty = schema.get("type").and_then(|t| t.as_str());
        let ty = ty.or_else(|| schema.get("properties").map(|_| "object"));
        match ty {
            Some("object") => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object, got {v}"))?;
                if let Some(req) = schema.get("required").and_then(|r| r.as_sequence()) {
                    for r in req.iter().filter_map(|r| r.as_str()) {
                        if !obj.contains_key(r) {
                            return Err(format!("{at}: required property `{r}` is missing"));
                        }
                    }
                }
                let props = schema.get("properties").and_then(|p| p.as_mapping());
                for (k, val) in obj {
                    let sub = format!("{at}.{k}");
                    match props.and_then(|p| p.get(k.as_str())) {
                        Some(p) => {
                            if p.get("readOnly").and_then(|r| r.as_bool()) == Some(true) {
                                return Err(format!("{sub}: read-only property sent"));
                            }
                            self.check(p, val, &sub)?
                        }
                        None => match schema.get("additionalProperties") {
                            Some(Yaml::Bool(true)) => {}
                            Some(ap @ Yaml::Mapping(_)) => self.check(ap, val, &sub)?,
                            _ => return Err(format!("{sub}: unknown property")),
                        },
                    }
                }
            }
            Some("array") => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| format!("{at}: expected an array, got {v}"))?;
                for (i, item) in arr.iter().enumerate() {
                    self.check(&schema["items"], item, &format!("{at}[{i}]"))?;
                }
            }
            Some("string") => {
                v.as_str()
                    .ok_or_else(|| format!("{at}: expected a string, got {v}"))?;
            }
            Some("boolean") => {
                v.as_bool()
                    .ok_or_else(|| format!("{at}: expected a boolean, got {v}"))?;
            }
            Some("integer") => {
                let n = v
                    .as_i64()
                    .or_else(|| v.as_u64().map(|u| u as i64))
                    .ok_or_else(|| format!("{at}: expected an integer, got {v}"))?;
                if let Some(min) = schema.get("minimum").and_then(|m| m.as_i64()) {
                    if n < min {
                        return Err(format!("{at}: {n} is below the minimum {min}"));
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(|m| m.as_i64()) {
                    if n > max {
                        return Err(format!("{at}: {n} is above the maximum {max}"));
                    }
                }
            }
            Some("number") => {
                v.as_f64()
                    .ok_or_else(|| format!("{at}: expected a number, got {v}"))?;
            }
            Some(other) => return Err(format!("{at}: unsupported schema type {other}")),
            None => {}
        }
        Ok(())
    }
}

fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

fn yaml_eq(a: &Yaml, v: &Json) -> bool {
    match (a, v) {
        (Yaml::String(s), Json::String(t)) => s == t,
        (Yaml::Bool(b), Json::Bool(c)) => b == c,
        (Yaml::Number(n), Json::Number(m)) => n.as_f64() == m.as_f64(),
        _ => false,
    }
}
