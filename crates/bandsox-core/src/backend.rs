//! Choosing the VMM backend: Firecracker where it can run, QEMU elsewhere.

use std::sync::Arc;

use bandsox_vmm::firecracker::{self, FirecrackerConfig, FirecrackerDriver};
use bandsox_vmm::qemu::QemuDriver;
use bandsox_vmm::VmmDriver;

use crate::error::{CoreError, Result};
use crate::storage::Storage;

/// Which backend a server uses (`serve --vmm`, `BANDSOX_VMM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmmChoice {
    /// Firecracker when its binary is found and KVM runs ordinary guests, else QEMU.
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl VmmChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "firecracker" => Some(Self::Firecracker),
            "qemu" => Some(Self::Qemu),
            _ => None,
        }
    }

    /// `BANDSOX_VMM`, or `auto`.
    pub fn from_env() -> Result<Self> {
        match bandsox_config::get(bandsox_config::VMM) {
            Some(v) if !v.is_empty() => Self::parse(&v).ok_or_else(|| {
                CoreError::InvalidInput(format!(
                    "BANDSOX_VMM={v}: expected auto, firecracker or qemu"
                ))
            }),
            _ => Ok(Self::Auto),
        }
    }
}

/// Builds the backend for `choice`. Firecracker VMs live under `<storage>/jail`.
pub fn select_driver(choice: VmmChoice, storage: &Storage) -> Result<Arc<dyn VmmDriver>> {
    let fc = || -> Result<Arc<dyn VmmDriver>> {
        let config = FirecrackerConfig::from_env(storage.root().join("jail"))?;
        Ok(Arc::new(FirecrackerDriver::new(config)))
    };
    match choice {
        VmmChoice::Qemu => Ok(Arc::new(QemuDriver::new()?)),
        VmmChoice::Firecracker => {
            if !firecracker::kvm_usable() {
                tracing::warn!("KVM does not run ordinary guests here (PVM or no /dev/kvm); Firecracker guests will not boot");
            }
            fc()
        }
        VmmChoice::Auto => {
            if firecracker::find_firecracker().is_some() && firecracker::kvm_usable() {
                fc()
            } else {
                Ok(Arc::new(QemuDriver::new()?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(VmmChoice::parse("auto"), Some(VmmChoice::Auto));
        assert_eq!(
            VmmChoice::parse("firecracker"),
            Some(VmmChoice::Firecracker)
        );
        assert_eq!(VmmChoice::parse("qemu"), Some(VmmChoice::Qemu));
        assert_eq!(VmmChoice::parse("kvm"), None);
        assert_eq!(VmmChoice::default(), VmmChoice::Auto);
    }
}
