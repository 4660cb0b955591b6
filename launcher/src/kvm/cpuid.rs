//! Guest CPUID: what KVM supports on this host, read once per process.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use super::error::KvmError;

/// `KVM_GET_SUPPORTED_CPUID`, as the ABI asks. Solo5 guests probe for features themselves
/// (e.g. RDRAND, TSC), so nothing is masked.
pub fn supported(kvm: &Kvm) -> Result<CpuId, KvmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))
}
