//! Guest memory as a VM's memory slot (the VM and vCPU themselves are made in `warm.rs`).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use super::error::KvmError;
use super::memory::GuestMemory;

/// Makes `mem` the VM's only memory slot, at GPA 0.
pub fn set_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.size(),
        userspace_addr: mem.host_base(),
    };
    // SAFETY: the region is our own mapping of `mem.size()` bytes, which outlives the VM (the
    // vCPU runner drops the VM before the memory).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))
}

/// Removes slot 0 (before its memory is unmapped or replaced).
pub fn clear_memory(vm: &VmFd) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0,
        userspace_addr: 0,
    };
    // SAFETY: deleting a slot makes KVM forget the mapping; no memory is referenced.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (delete)"))
}
