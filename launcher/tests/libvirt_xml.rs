//! Generated domain XML (qemu/kvm, Xen PVH, Xen PV) is valid against libvirt's own schema
//! (`virt-xml-validate`), and everything interpolated is escaped.

use std::path::PathBuf;
use std::process::Command;

use summon_launcher::libvirt::xml::{interface_macs, serial_log};
use summon_launcher::libvirt::{DomainXml, GuestKind, NicXml, QBOOT};

fn doc(kind: GuestKind) -> DomainXml {
    DomainXml {
        kind,
        name: "summon-web".into(),
        memory_mib: 32,
        vcpus: 1,
        kernel: "/srv/unikernels/http.virtio".into(),
        cmdline: "--ipv4=10.77.0.20/16 --ipv4-gateway=10.77.0.1 --port=80".into(),
        firmware: (kind == GuestKind::Kvm).then(|| PathBuf::from(QBOOT)),
        console_log: (kind == GuestKind::Kvm)
            .then(|| PathBuf::from("/var/log/libvirt/qemu/summon-web.console.log")),
        nic: Some(NicXml {
            mac: [0x02, 0x53, 0x4d, 0, 0, 0x14].into(),
            tap: "smv-web".into(),
        }),
    }
}

/// `virt-xml-validate` present, or None (outside CI) after saying why.
fn validator() -> Option<&'static str> {
    let ok = Command::new("virt-xml-validate")
        .arg("--help")
        .output()
        .map(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
        .unwrap_or(false);
    if ok {
        return Some("virt-xml-validate");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("virt-xml-validate (libvirt-clients + libxml2-utils) is required in CI");
    }
    eprintln!("skipping: virt-xml-validate not installed");
    None
}

fn validate(name: &str, xml: &str) {
    let Some(tool) = validator() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    let out = Command::new(tool)
        .arg(&file)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} XML rejected by libvirt's schema:\n{xml}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_xml_is_valid() {
    let xml = doc(GuestKind::Kvm).render();
    assert!(xml.contains("<loader type='rom'>/usr/share/qemu/qboot.rom</loader>"));
    assert!(xml.contains("name='arch-capabilities'"));
    assert!(xml.contains("<target dev='smv-web' managed='no'/>"));
    assert!(xml.contains("virtio-transitional"));
    validate("qemu", &xml);
}

#[test]
fn xen_pvh_xml_is_valid() {
    let xml = doc(GuestKind::XenPvh).render();
    assert!(xml.contains("<domain type='xen'>") && xml.contains(">xenpvh</type>"));
    validate("xen-pvh", &xml);
}

#[test]
fn xen_pv_xml_is_valid() {
    let xml = doc(GuestKind::XenPv).render();
    assert!(xml.contains("machine='xenpv'>linux</type>"));
    assert!(xml.contains("<target type='xen' port='0'/>"));
    validate("xen-pv", &xml);
}

#[test]
fn minimal_xml_without_nic_or_console_is_valid() {
    let mut d = doc(GuestKind::Kvm);
    d.nic = None;
    d.console_log = None;
    d.firmware = None;
    d.cmdline.clear();
    let xml = d.render();
    assert!(!xml.contains("<interface") && !xml.contains("<cmdline>"));
    validate("qemu-minimal", &xml);
}

#[test]
fn hostile_strings_are_escaped() {
    let mut d = doc(GuestKind::Kvm);
    d.name = "a'b<c>&\"d".into();
    d.cmdline = "--msg=</cmdline><devices/> & 'x'\u{1}".into();
    d.kernel = "/tmp/it's <here>.virtio".into();
    d.console_log = Some("/tmp/log'&.log".into());
    let xml = d.render();
    let parsed = roxmltree::Document::parse(&xml).expect("well-formed");
    let text = |tag: &str| {
        parsed
            .descendants()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    assert_eq!(text("name").as_deref(), Some("a'b<c>&\"d"));
    assert_eq!(
        text("cmdline").as_deref(),
        Some("--msg=</cmdline><devices/> & 'x' ")
    );
    assert_eq!(text("kernel").as_deref(), Some("/tmp/it's <here>.virtio"));
    assert_eq!(serial_log(&xml), Some(PathBuf::from("/tmp/log'&.log")));
    assert_eq!(
        parsed
            .descendants()
            .filter(|n| n.has_tag_name("devices"))
            .count(),
        1
    );
}

#[test]
fn macs_are_read_from_domain_xml() {
    let xml = doc(GuestKind::Kvm).render();
    assert_eq!(
        interface_macs(&xml).unwrap(),
        vec![[0x02, 0x53, 0x4d, 0, 0, 0x14]]
    );
    let two = "<domain><devices><interface type='network'><mac address='52:54:00:AB:cd:01'/></interface>\
               <interface type='bridge'><mac address='52:54:00:00:00:02'/></interface></devices></domain>";
    assert_eq!(
        interface_macs(two).unwrap(),
        vec![[0x52, 0x54, 0, 0xab, 0xcd, 1], [0x52, 0x54, 0, 0, 0, 2]]
    );
    assert!(interface_macs(
        "<domain><devices><interface><mac address='zz'/></interface></devices></domain>"
    )
    .is_err());
    assert!(interface_macs("<domain").is_err());
}
