//! The zone's static answers and the classification of a query name. The registry decides
//! whether a service can be summoned; this decides what the name means.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::config::{Config, IpNet};

/// What a query name refers to.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'z> {
    /// The zone apex (SOA, NS).
    Apex,
    /// The name server's own host name inside the zone.
    NameServer,
    /// A service; carries its lower-case name for the registry.
    Service(&'z str),
    /// Inside the zone but nothing there.
    NxDomain,
    /// Not our zone.
    Outside,
}

/// What the DNS front needs to answer without the registry.
pub struct Zone {
    pub origin: LowerName,
    pub ttl: u32,
    pub soa: Record,
    pub ns: Record,
    pub ns_a: Option<Record>,
    ns_label: Option<Vec<u8>>,
    /// Service label → (service name, its A record).
    services: HashMap<Vec<u8>, (String, Record)>,
    pub upstream: Vec<SocketAddr>,
    /// Sources whose out-of-zone queries may be forwarded (here so a reload swaps it).
    forward_allow: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid name {0:?}: {1}")]
pub struct ZoneError(String, String);

fn name(s: &str) -> Result<Name, ZoneError> {
    Name::from_str(s).map_err(|e| ZoneError(s.to_string(), e.to_string()))
}

impl Zone {
    /// `serial` goes into the SOA; use something that grows with each (re)load.
    pub fn from_config(cfg: &Config, serial: u32) -> Result<Zone, ZoneError> {
        let origin = name(&cfg.dns.zone)?;
        let ttl = cfg.dns.ttl;
        let ns_name = name(&cfg.dns.nameserver)?;
        let rname = name(&format!("hostmaster.{}", cfg.dns.zone))?;
        // Negative answers are cached for min(SOA TTL, MINIMUM): keep both at the zone's TTL
        // so a new service is visible as fast as a changed one.
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                rname,
                serial,
                3600,
                600,
                86400,
                ttl,
            )),
        );
        let ns = Record::from_rdata(origin.clone(), ttl, RData::NS(NS(ns_name.clone())));
        let origin_l = LowerName::new(&origin);
        let ns_l = LowerName::new(&ns_name);
        let (ns_a, ns_label) =
            if origin_l.zone_of(&ns_l) && ns_l.num_labels() == origin_l.num_labels() + 1 {
                let label = ns_l.iter().next().map(|l| l.to_vec());
                (
                    Some(Record::from_rdata(
                        ns_name,
                        ttl,
                        RData::A(A(cfg.dns.nameserver_ip)),
                    )),
                    label,
                )
            } else {
                (None, None)
            };
        let mut services = HashMap::new();
        for s in &cfg.services {
            let fqdn = name(&format!("{}.{}", s.name, cfg.dns.zone))?;
            let rec = Record::from_rdata(fqdn, ttl, RData::A(A(s.ip)));
            services.insert(s.name.as_bytes().to_vec(), (s.name.clone(), rec));
        }
        Ok(Zone {
            origin: origin_l,
            ttl,
            soa,
            ns,
            ns_a,
            ns_label,
            services,
            upstream: cfg.dns.upstream.clone(),
            forward_allow: cfg.dns.forward_allow.clone(),
        })
    }

    /// Classifies a (lower-case) query name.
    pub fn target(&self, qname: &LowerName) -> Target<'_> {
        if !self.origin.zone_of(qname) {
            return Target::Outside;
        }
        let depth = qname.num_labels();
        let apex = self.origin.num_labels();
        if depth == apex {
            return Target::Apex;
        }
        if depth != apex + 1 {
            return Target::NxDomain;
        }
        let Some(label) = qname.iter().next() else {
            return Target::NxDomain;
        };
        if let Some((svc, _)) = self.services.get(label) {
            return Target::Service(svc);
        }
        if self.ns_label.as_deref() == Some(label) {
            return Target::NameServer;
        }
        Target::NxDomain
    }

    /// Whether queries from `src` may be forwarded (a v4-mapped IPv6 source as its IPv4).
    pub fn forward_allowed(&self, src: IpAddr) -> bool {
        let src = src.to_canonical();
        self.forward_allow.iter().any(|n| n.contains(&src))
    }

    pub fn service_record(&self, service: &str) -> Option<&Record> {
        self.services.get(service.as_bytes()).map(|(_, r)| r)
    }
}

/// Record types that summon a service: only address lookups boot anything.
pub fn summons(qtype: RecordType) -> bool {
    qtype == RecordType::A
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn zone() -> Zone {
        let dir = std::env::temp_dir();
        let img = dir.join("summon-zone-test.img");
        std::fs::write(&img, b"x").unwrap();
        let src = format!(
            r#"
[dns]
listen = ["127.0.0.1:5300"]
zone = "Svc.Test"
ttl = 7
[network]
subnet = "10.77.0.0/16"
gateway = "10.77.0.1"
[[service]]
name = "Hello"
image = "{}"
ip = "10.77.0.10"
"#,
            img.display()
        );
        let cfg = Config::parse(&src, Path::new("/")).unwrap();
        Zone::from_config(&cfg, 1).unwrap()
    }

    fn ln(s: &str) -> LowerName {
        LowerName::from_str(s).unwrap()
    }

    #[test]
    fn classifies_names_case_insensitively() {
        let z = zone();
        assert_eq!(z.target(&ln("svc.test.")), Target::Apex);
        assert_eq!(z.target(&ln("SVC.TEST.")), Target::Apex);
        assert_eq!(z.target(&ln("hello.svc.test.")), Target::Service("hello"));
        assert_eq!(z.target(&ln("HeLLo.sVc.TeSt.")), Target::Service("hello"));
        assert_eq!(z.target(&ln("ns.svc.test.")), Target::NameServer);
        assert_eq!(z.target(&ln("nope.svc.test.")), Target::NxDomain);
        assert_eq!(z.target(&ln("a.hello.svc.test.")), Target::NxDomain);
        assert_eq!(z.target(&ln("example.com.")), Target::Outside);
        assert_eq!(z.target(&ln("test.")), Target::Outside);
        assert_eq!(z.target(&ln(".")), Target::Outside);
        assert_eq!(z.ttl, 7);
        for (src, allowed) in [
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("::1", true),
            ("::ffff:127.0.0.2", true),
            ("10.0.0.1", false),
            ("::2", false),
        ] {
            assert_eq!(z.forward_allowed(src.parse().unwrap()), allowed, "{src}");
        }
        assert_eq!(z.service_record("hello").unwrap().ttl, 7);
    }

    #[test]
    fn only_a_summons() {
        assert!(summons(RecordType::A));
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::ANY,
            RecordType::NS,
        ] {
            assert!(!summons(t));
        }
    }
}
