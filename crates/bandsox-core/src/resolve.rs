//! One resolver for references to VMs and snapshots, used by the REST API (every `{id}` in a
//! path) and so by the CLI: a full id, a name, or a unique id prefix of at least
//! [`MIN_PREFIX`] characters, tried in that order (as `docker` does).

use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// Shortest id prefix accepted as a reference.
pub const MIN_PREFIX: usize = 4;

/// Candidates named in an ambiguity error, at most.
const MAX_CANDIDATES: usize = 10;

/// Finds the one id `reference` names among `items` (`(id, name)` pairs); `kind` names the
/// object in errors (`VM`, `snapshot`).
pub fn resolve<'a>(
    kind: &'static str,
    reference: &str,
    items: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<String> {
    if let Some((id, _)) = items.clone().into_iter().find(|(id, _)| *id == reference) {
        return Ok(id.to_owned());
    }
    let by_name: Vec<(&str, &str)> = items
        .clone()
        .into_iter()
        .filter(|(_, name)| *name == reference)
        .collect();
    match by_name.as_slice() {
        [(id, _)] => return Ok((*id).to_owned()),
        [] => {}
        several => return Err(ambiguous(kind, reference, several)),
    }
    if reference.len() >= MIN_PREFIX {
        let by_prefix: Vec<(&str, &str)> = items
            .into_iter()
            .filter(|(id, _)| id.starts_with(reference))
            .collect();
        match by_prefix.as_slice() {
            [(id, _)] => return Ok((*id).to_owned()),
            [] => {}
            several => return Err(ambiguous(kind, reference, several)),
        }
    }
    Err(CoreError::NotFound {
        kind,
        id: reference.to_owned(),
    })
}

fn ambiguous(kind: &'static str, reference: &str, several: &[(&str, &str)]) -> CoreError {
    let mut candidates: Vec<String> = several
        .iter()
        .take(MAX_CANDIDATES)
        .map(|(id, name)| {
            if name.is_empty() {
                (*id).to_owned()
            } else {
                format!("{id} ({name})")
            }
        })
        .collect();
    if several.len() > MAX_CANDIDATES {
        candidates.push(format!("and {} more", several.len() - MAX_CANDIDATES));
    }
    CoreError::Ambiguous {
        kind,
        reference: reference.to_owned(),
        candidates,
    }
}

impl Manager {
    /// The id of the VM `reference` names (id, name or unique id prefix).
    pub fn resolve_vm(&self, reference: &str) -> Result<String> {
        let vms = self.store().list_vm_names()?;
        resolve(
            "VM",
            reference,
            vms.iter().map(|(i, n)| (i.as_str(), n.as_str())),
        )
    }

    /// The id of the snapshot `reference` names (id, name or unique id prefix).
    pub fn resolve_snapshot(&self, reference: &str) -> Result<String> {
        let snaps = self.store().list_snapshot_names()?;
        resolve(
            "snapshot",
            reference,
            snaps.iter().map(|(i, n)| (i.as_str(), n.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: &[(&str, &str)] = &[
        ("d842e856-0000-4000-8000-000000000001", "web"),
        ("d842f000-0000-4000-8000-000000000002", "db"),
        ("abcd1234-0000-4000-8000-000000000003", "twin"),
        ("abce1234-0000-4000-8000-000000000004", "twin"),
        ("ffff0000-0000-4000-8000-000000000005", "d842"),
    ];

    fn r(reference: &str) -> Result<String> {
        resolve("VM", reference, ITEMS.iter().copied())
    }

    #[test]
    fn full_id_name_and_prefix() {
        assert_eq!(r(ITEMS[0].0).unwrap(), ITEMS[0].0);
        assert_eq!(r("db").unwrap(), ITEMS[1].0);
        assert_eq!(r("d842e").unwrap(), ITEMS[0].0);
        assert_eq!(r("abcd").unwrap(), ITEMS[2].0);
    }

    #[test]
    fn a_name_wins_over_a_prefix() {
        assert_eq!(r("d842").unwrap(), ITEMS[4].0);
    }

    #[test]
    fn short_prefixes_and_unknown_references_are_not_found() {
        assert_eq!(r("abc").unwrap_err().code(), "vm_not_found");
        assert_eq!(r("nope").unwrap_err().code(), "vm_not_found");
        assert_eq!(r("").unwrap_err().code(), "vm_not_found");
    }

    #[test]
    fn ambiguity_lists_the_candidates() {
        let e = r("twin").unwrap_err();
        assert_eq!(e.code(), "ambiguous_reference");
        let msg = e.to_string();
        assert!(
            msg.contains(ITEMS[2].0) && msg.contains(ITEMS[3].0),
            "{msg}"
        );
        let e = r("d842f").map(drop);
        assert!(e.is_ok());
        let e = r("ab").unwrap_err();
        assert_eq!(e.code(), "vm_not_found");
        let e = resolve("VM", "abc", ITEMS.iter().copied()).unwrap_err();
        assert_eq!(
            e.code(),
            "vm_not_found",
            "3 characters are too short a prefix"
        );
        let e = resolve("snapshot", "d842", ITEMS[..2].iter().copied()).unwrap_err();
        assert_eq!(e.code(), "ambiguous_reference");
        assert!(e.to_string().contains("(web)"), "{e}");
    }
}
