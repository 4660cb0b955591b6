//! The libvirt backend: summon domains on any libvirt host (`qemu:///system`, `xen:///system`,
//! `qemu+ssh://host/system`, `test:///default`), either an existing domain by name or UUID, or a
//! transient domain generated from the service's config (see `xml.rs`).
//!
//! A backend is one service's view of one connection; services on the same URI can share the
//! connection ([`Conn`]), which reconnects by itself when libvirtd restarts.

mod conn;
mod error;
mod instance;
mod state;
pub mod xml;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use conn::Conn;
pub use error::{LibvirtError, VIR_ERR_NO_DOMAIN};
use instance::Console;
pub use instance::LibvirtInstance;
pub use xml::{DomainXml, GuestKind, NicXml, QBOOT};

use crate::backend::{Backend, BackendError, EventSink, Instance, InstanceSpec, TapSource};
use state::observe;
use virt::domain::DomainState;

/// Which domain a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainSource {
    /// A domain libvirt already knows, by name or UUID: started when shut off, resumed when
    /// paused, never undefined.
    Existing(String),
    /// A transient domain generated from the instance spec (image, memory, NIC, args).
    Generated(Generated),
}

/// How to generate a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub kind: GuestKind,
    pub vcpus: u32,
    /// qemu: the `pc` machine's firmware; [`QBOOT`] by default.
    pub firmware: Option<PathBuf>,
    /// qemu: where the serial console log goes (`<dir>/<domain>.console.log`).
    pub console_dir: PathBuf,
}

impl Generated {
    pub fn new(kind: GuestKind) -> Generated {
        Generated {
            kind,
            vcpus: 1,
            firmware: (kind == GuestKind::Kvm).then(|| PathBuf::from(QBOOT)),
            console_dir: PathBuf::from("/var/log/libvirt/qemu"),
        }
    }
}

/// What stopping an instance does to its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `virDomainDestroy`: immediate power-off (a transient domain disappears).
    Destroy,
    /// `virDomainShutdown` (ACPI / PV shutdown request), destroyed when it takes longer.
    Shutdown { timeout: Duration },
}

/// One service's libvirt settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    pub uri: String,
    pub domain: DomainSource,
    pub stop: StopMode,
}

/// What libvirt says about an existing domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    pub state: crate::backend::InstanceState,
    /// MACs of its interfaces, in XML order: the daemon needs the guest's MAC for the SYN hold.
    pub macs: Vec<crate::MacAddr>,
    /// The serial console's log file, when the domain writes one.
    pub console_log: Option<PathBuf>,
}

/// Marks generated domains so that leftovers of a crashed daemon can be found.
const DESCRIPTION: &str = "summoned by summond";
/// Generated domains are named `summon-<instance>`.
pub const NAME_PREFIX: &str = "summon-";

pub struct LibvirtBackend {
    conn: Arc<Conn>,
    config: LibvirtConfig,
}

impl LibvirtBackend {
    /// Connects to `config.uri` (errors carry libvirt's message).
    pub fn new(config: LibvirtConfig) -> Result<LibvirtBackend, LibvirtError> {
        let conn = Conn::open(&config.uri)?;
        Ok(LibvirtBackend { conn, config })
    }

    /// Shares an open connection with other services on the same URI.
    pub fn with_conn(conn: Arc<Conn>, config: LibvirtConfig) -> LibvirtBackend {
        LibvirtBackend { conn, config }
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// Looks an existing domain up by name or UUID and reads its state and MACs.
    pub fn inspect(&self, name_or_uuid: &str) -> Result<DomainInfo, LibvirtError> {
        let uuid = self.lookup(name_or_uuid)?;
        let (name, o, xml) = self.conn.with_domain(&uuid, "read domain", |d| {
            Ok((d.name()?, observe(d)?, d.xml_desc(0)?))
        })?;
        let macs = xml::interface_macs(&xml).map_err(|reason| LibvirtError::Xml {
            uri: self.conn.uri().to_string(),
            domain: name.clone(),
            reason,
        })?;
        Ok(DomainInfo {
            name,
            uuid,
            state: o.instance_state(),
            macs,
            console_log: xml::serial_log(&xml).filter(|_| self.is_local()),
        })
    }

    /// The UUID of the domain with this name or UUID; unknown → libvirt's own "Domain not found".
    fn lookup(&self, name_or_uuid: &str) -> Result<String, LibvirtError> {
        let by_uuid = looks_like_uuid(name_or_uuid);
        self.conn
            .call("look up domain", |c| {
                let d = if by_uuid {
                    c.lookup_domain_by_uuid_string(name_or_uuid)?
                } else {
                    c.lookup_domain_by_name(name_or_uuid)?
                };
                d.uuid_string()
            })
            .map_err(|e| match e {
                LibvirtError::Call {
                    uri, code, message, ..
                } if code == VIR_ERR_NO_DOMAIN => LibvirtError::UnknownDomain {
                    uri,
                    domain: name_or_uuid.to_string(),
                    message,
                },
                e => e,
            })
    }

    fn is_local(&self) -> bool {
        is_local_uri(self.conn.uri())
    }

    fn start_existing(
        &self,
        which: &str,
        events: EventSink,
    ) -> Result<LibvirtInstance, LibvirtError> {
        let info = self.inspect(which)?;
        let o = self.conn.with_domain(&info.uuid, "get state", observe)?;
        let mut from_end = true;
        match o.state {
            DomainState::Running | DomainState::Blocked => {}
            DomainState::Paused => {
                self.conn
                    .with_domain(&info.uuid, "resume", |d| d.resume())?;
            }
            DomainState::PMSuspended => {
                self.conn
                    .with_domain(&info.uuid, "wake up", |d| d.pm_wakeup(0))?;
            }
            DomainState::Shutoff | DomainState::Crashed | DomainState::NoState => {
                self.conn.with_domain(&info.uuid, "start", |d| d.create())?;
                from_end = false;
            }
            DomainState::Shutdown => {
                return Err(LibvirtError::State {
                    uri: self.conn.uri().to_string(),
                    domain: info.name,
                    state: o.name().to_string(),
                    op: "start",
                });
            }
        }
        Ok(LibvirtInstance::new(
            self.conn.clone(),
            info.uuid,
            info.name,
            self.config.stop,
            events,
            info.console_log.map(|path| Console { path, from_end }),
        ))
    }

    fn start_generated(
        &self,
        gen: &Generated,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<LibvirtInstance, LibvirtError> {
        let doc = self.render(gen, &spec)?;
        // A leftover of ours under the same name (daemon crashed) would make the create fail.
        self.destroy_leftover(&doc.name)?;
        if let Some(log) = &doc.console_log {
            if self.is_local() {
                match std::fs::remove_file(log) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(LibvirtError::ConsoleLog {
                            path: log.clone(),
                            source,
                        })
                    }
                }
            }
        }
        let xml = doc.render();
        let uuid = self.conn.call("create domain", |c| {
            c.create_domain_xml(&xml, 0)?.uuid_string()
        })?;
        Ok(LibvirtInstance::new(
            self.conn.clone(),
            uuid,
            doc.name.clone(),
            self.config.stop,
            events,
            doc.console_log
                .filter(|_| self.is_local())
                .map(|path| Console {
                    path,
                    from_end: false,
                }),
        ))
    }

    /// The domain XML for an instance spec.
    pub fn render(&self, gen: &Generated, spec: &InstanceSpec) -> Result<DomainXml, LibvirtError> {
        if !spec.blocks.is_empty() {
            return Err(LibvirtError::Unsupported(
                "block devices are not supported for generated libvirt domains".into(),
            ));
        }
        if spec.nets.len() > 1 {
            return Err(LibvirtError::Unsupported(
                "generated libvirt domains have at most one network interface".into(),
            ));
        }
        let nic = match spec.nets.first() {
            None => None,
            Some(net) => match &net.tap {
                TapSource::Name(tap) => Some(NicXml {
                    mac: net.mac.unwrap_or_else(crate::MacAddr::random_local),
                    tap: tap.clone(),
                }),
                TapSource::Fd(_) => {
                    return Err(LibvirtError::Unsupported(
                        "libvirt opens the tap itself: give its name, not an open fd".into(),
                    ))
                }
            },
        };
        let name = if spec.name.starts_with(NAME_PREFIX) {
            spec.name.clone()
        } else {
            format!("{NAME_PREFIX}{}", spec.name)
        };
        let console_log = (gen.kind == GuestKind::Kvm)
            .then(|| gen.console_dir.join(format!("{name}.console.log")));
        Ok(DomainXml {
            kind: gen.kind,
            name,
            memory_mib: spec.memory_mib,
            vcpus: gen.vcpus,
            kernel: spec.image.clone(),
            cmdline: spec.args.join(" "),
            firmware: gen.firmware.clone(),
            console_log,
            nic,
        })
    }

    fn destroy_leftover(&self, name: &str) -> Result<(), LibvirtError> {
        let found = self
            .conn
            .call("look up domain", |c| match c.lookup_domain_by_name(name) {
                Ok(d) => Ok(Some((d.is_persistent()?, d.xml_desc(0)?))),
                Err(e) if e.code().to_raw() == VIR_ERR_NO_DOMAIN => Ok(None),
                Err(e) => Err(e),
            })?;
        match found {
            None => Ok(()),
            Some((false, xml)) if xml.contains(DESCRIPTION) => {
                tracing::info!(domain = %name, "destroying a leftover transient domain");
                self.conn.call("destroy leftover", |c| {
                    c.lookup_domain_by_name(name)?.destroy()
                })
            }
            Some(_) => Err(LibvirtError::Unsupported(format!(
                "a domain named {name} exists and was not generated by summond"
            ))),
        }
    }
}

/// Destroys every transient domain summond generated on this connection (a crashed daemon's
/// leftovers); returns their names.
pub fn destroy_leftovers(conn: &Conn) -> Result<Vec<String>, LibvirtError> {
    conn.call("destroy leftovers", |c| {
        let mut gone = Vec::new();
        // VIR_CONNECT_LIST_DOMAINS_ACTIVE | VIR_CONNECT_LIST_DOMAINS_TRANSIENT
        for d in c.list_all_domains(1 | 16)? {
            let name = d.name()?;
            if name.starts_with(NAME_PREFIX) && d.xml_desc(0)?.contains(DESCRIPTION) {
                d.destroy()?;
                gone.push(name);
            }
        }
        Ok(gone)
    })
}

impl Backend for LibvirtBackend {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let instance = match &self.config.domain {
            DomainSource::Existing(which) => self.start_existing(which, events)?,
            DomainSource::Generated(gen) => self.start_generated(gen, spec, events)?,
        };
        Ok(Box::new(instance))
    }
}

fn looks_like_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `qemu:///system`, `xen:///`, `test:///default` are local; `qemu+ssh://host/system` is not.
pub fn is_local_uri(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((_, rest)) => rest.starts_with('/'),
        None => true,
    }
}
