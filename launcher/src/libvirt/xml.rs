//! Domain XML generated from a service's config: qemu/kvm (direct kernel boot through the qboot
//! firmware), Xen PVH and Xen PV. Everything interpolated is escaped; nothing else varies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Which hypervisor and boot protocol a generated domain uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// qemu/kvm, `pc` machine, direct kernel boot (PVH or multiboot ELF) from `firmware`.
    Kvm,
    /// Xen PVH: the image carries a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
    XenPvh,
    /// Xen PV, for images built for the PV ABI.
    XenPv,
}

/// The guest's network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicXml {
    pub mac: crate::MacAddr,
    /// A tap the daemon created (qemu: `type='ethernet'`, `managed='no'`) or the vif name (Xen).
    pub tap: String,
}

/// Everything that varies between generated domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainXml {
    pub kind: GuestKind,
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub cmdline: String,
    /// qemu only: the firmware ROM for the `pc` machine (qboot boots in a few ms; SeaBIOS ~3 s here).
    pub firmware: Option<PathBuf>,
    /// qemu: the serial port is written to this file (by virtlogd). Xen: the PV console is a pty.
    pub console_log: Option<PathBuf>,
    pub nic: Option<NicXml>,
}

/// Debian's qboot, shipped in qemu-system-data.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

impl DomainXml {
    pub fn render(&self) -> String {
        let mut x = String::with_capacity(1024);
        let domain_type = match self.kind {
            GuestKind::Kvm => "kvm",
            GuestKind::XenPvh | GuestKind::XenPv => "xen",
        };
        let _ = writeln!(x, "<domain type='{domain_type}'>");
        let _ = writeln!(x, "  <name>{}</name>", esc(&self.name));
        let _ = writeln!(x, "  <description>summoned by summond</description>");
        let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", self.memory_mib);
        let _ = writeln!(x, "  <vcpu>{}</vcpu>", self.vcpus.max(1));
        x.push_str("  <os>\n");
        match self.kind {
            GuestKind::Kvm => {
                x.push_str("    <type arch='x86_64' machine='pc'>hvm</type>\n");
                if let Some(fw) = &self.firmware {
                    let _ = writeln!(x, "    <loader type='rom'>{}</loader>", path(fw));
                }
            }
            GuestKind::XenPvh => {
                x.push_str("    <type arch='x86_64' machine='xenpvh'>xenpvh</type>\n")
            }
            GuestKind::XenPv => {
                x.push_str("    <type arch='x86_64' machine='xenpv'>linux</type>\n")
            }
        }
        let _ = writeln!(x, "    <kernel>{}</kernel>", path(&self.kernel));
        if !self.cmdline.is_empty() {
            let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(&self.cmdline));
        }
        x.push_str("  </os>\n");
        if self.kind == GuestKind::Kvm {
            // QEMU on this kind of host aborts setting MSR 0x10a with arch-capabilities on.
            x.push_str(
                "  <cpu mode='host-passthrough'>\n    <feature policy='disable' name='arch-capabilities'/>\n  </cpu>\n",
            );
        }
        x.push_str("  <clock offset='utc'/>\n");
        // A unikernel that halts or crashes is finished: never restart it behind the daemon's back.
        x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
        x.push_str("  <devices>\n");
        match self.kind {
            GuestKind::Kvm => {
                // No USB controller and no balloon: fewer PCI devices for the firmware to walk.
                x.push_str("    <controller type='usb' model='none'/>\n");
                match &self.console_log {
                    Some(log) => {
                        let _ = writeln!(
                            x,
                            "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    </serial>",
                            path(log)
                        );
                    }
                    None => x.push_str(
                        "    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n",
                    ),
                }
            }
            GuestKind::XenPvh | GuestKind::XenPv => {
                x.push_str("    <console type='pty'>\n      <target type='xen' port='0'/>\n    </console>\n");
            }
        }
        if let Some(nic) = &self.nic {
            x.push_str("    <interface type='ethernet'>\n");
            let _ = writeln!(x, "      <mac address='{}'/>", nic.mac);
            match self.kind {
                GuestKind::Kvm => {
                    let _ = writeln!(x, "      <target dev='{}' managed='no'/>", esc(&nic.tap));
                    // Transitional virtio-net: the legacy interface the guest driver speaks.
                    x.push_str("      <model type='virtio-transitional'/>\n");
                }
                GuestKind::XenPvh | GuestKind::XenPv => {
                    let _ = writeln!(x, "      <target dev='{}'/>", esc(&nic.tap));
                }
            }
            x.push_str("    </interface>\n");
        }
        if self.kind == GuestKind::Kvm {
            x.push_str("    <memballoon model='none'/>\n");
        }
        x.push_str("  </devices>\n</domain>\n");
        x
    }
}

/// The MAC addresses of a domain's network interfaces, in the order of its XML.
pub fn interface_macs(xml: &str) -> Result<Vec<crate::MacAddr>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut macs = Vec::new();
    for iface in doc.descendants().filter(|n| {
        n.has_tag_name("interface") && n.parent().is_some_and(|p| p.has_tag_name("devices"))
    }) {
        if let Some(addr) = iface
            .children()
            .find(|n| n.has_tag_name("mac"))
            .and_then(|n| n.attribute("address"))
        {
            macs.push(addr.parse().map_err(|e| format!("{e}"))?);
        }
    }
    Ok(macs)
}

fn path(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The file a domain's first serial port writes to (`<serial type='file'>`), if any.
pub fn serial_log(xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let serial = doc
        .descendants()
        .find(|n| n.has_tag_name("serial") && n.attribute("type") == Some("file"))?;
    let path = serial
        .children()
        .find(|n| n.has_tag_name("source"))?
        .attribute("path")?;
    Some(PathBuf::from(path))
}
