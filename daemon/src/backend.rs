//! Which launcher backend runs a service's instances.

use std::sync::Arc;

use summon_launcher::Backend;

use crate::config::BackendKind;

/// The backend for a kind of service.
pub fn for_kind(kind: BackendKind) -> anyhow::Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Kvm => kvm(),
        // Per-service backends: see crate::libvirt::ServiceBackends.
        BackendKind::Libvirt => anyhow::bail!("libvirt backends are made per service"),
    }
}

fn kvm() -> anyhow::Result<Arc<dyn Backend>> {
    Ok(Arc::new(summon_launcher::kvm::KvmBackend::new()?))
}
