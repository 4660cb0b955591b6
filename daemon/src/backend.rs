//! Which launcher backend runs a service's instances.

use std::sync::Arc;

use summon_launcher::Backend;

use crate::config::{BackendKind, KvmConfig};

/// The backend for a kind of service.
pub fn for_kind(kind: BackendKind, kvm_cfg: KvmConfig) -> anyhow::Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Kvm => kvm(kvm_cfg),
        // Per-service backends: see crate::libvirt::ServiceBackends.
        BackendKind::Libvirt => anyhow::bail!("libvirt backends are made per service"),
    }
}

fn kvm(cfg: KvmConfig) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(Arc::new(summon_launcher::kvm::KvmBackend::with_prewarm(
        cfg.prewarm,
    )?))
}
