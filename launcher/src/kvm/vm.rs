//! Creating the VM and its single vCPU.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_userspace_memory_region, CpuId};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::error::KvmError;
use super::memory::GuestMemory;

/// A VM with `mem` as its only memory slot at GPA 0.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
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
        .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(vm)
}

/// vCPU 0 with the given CPUID and initial registers.
pub fn create_vcpu(
    vm: &VmFd,
    cpuid: &CpuId,
    sregs: &kvm_sregs,
    regs: &kvm_regs,
) -> Result<VcpuFd, KvmError> {
    let vcpu = vm
        .create_vcpu(0)
        .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(cpuid)
        .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
    vcpu.set_sregs(sregs)
        .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(regs)
        .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    Ok(vcpu)
}
