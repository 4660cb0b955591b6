//! The DNS front: a hickory-server `RequestHandler` that answers the zone, summons services on
//! A queries and forwards or refuses everything else.

mod forward;
pub mod local;
pub mod rrl;
#[cfg(test)]
mod tests;
pub mod zone;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

use crate::metrics::Metrics;
use crate::registry::Registry;
pub use zone::{Target, Zone};

/// The zone currently served; swapped whole on reload.
pub type SharedZone = Arc<RwLock<Arc<Zone>>>;

pub struct DnsFront {
    zone: SharedZone,
    registry: Registry,
    metrics: Arc<Metrics>,
}

impl DnsFront {
    pub fn new(zone: SharedZone, registry: Registry, metrics: Arc<Metrics>) -> DnsFront {
        DnsFront {
            zone,
            registry,
            metrics,
        }
    }
}

fn qtype_label(t: RecordType) -> &'static str {
    // Bounded label set: hostile queries must not grow the metrics without limit.
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::ANY => "ANY",
        RecordType::CNAME => "CNAME",
        RecordType::MX => "MX",
        RecordType::NS => "NS",
        RecordType::PTR => "PTR",
        RecordType::SOA => "SOA",
        RecordType::SRV => "SRV",
        RecordType::TXT => "TXT",
        RecordType::HTTPS => "HTTPS",
        _ => "other",
    }
}

fn rcode_label(r: ResponseCode) -> &'static str {
    match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

/// Whether wire-format question bytes use name compression (a label byte 0b11xxxxxx).
fn has_pointer(mut wire: &[u8]) -> bool {
    while let Some(&len) = wire.first() {
        if len & 0xc0 != 0 {
            return true;
        }
        if len == 0 {
            // End of name: skip QTYPE and QCLASS.
            wire = wire.get(5..).unwrap_or(&[]);
        } else {
            wire = wire.get(1 + usize::from(len)..).unwrap_or(&[]);
        }
    }
    false
}

/// What to send: rcode, flags and the records of each section.
struct Reply<'a> {
    rcode: ResponseCode,
    authoritative: bool,
    recursion_available: bool,
    answers: Vec<&'a Record>,
    authorities: Vec<&'a Record>,
    additionals: Vec<&'a Record>,
}

impl<'a> Reply<'a> {
    fn rcode(rcode: ResponseCode, authoritative: bool) -> Self {
        Reply {
            rcode,
            authoritative,
            recursion_available: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    /// NOERROR without data (or NXDOMAIN), with the SOA for negative caching.
    fn negative(rcode: ResponseCode, zone: &'a Zone) -> Self {
        let mut r = Reply::rcode(rcode, true);
        r.authorities.push(&zone.soa);
        r
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsFront {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let t0 = Instant::now();
        let zone = self.zone.read().unwrap_or_else(|p| p.into_inner()).clone();

        let mut resp_edns = None;
        if let Some(req) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            resp_edns = Some((e, req.version()));
        }
        let edns_ref = resp_edns.as_ref().map(|(e, _)| e);

        let queries = request.queries.queries();
        let qtype = queries.first().map(|q| q.query_type());
        let mut cold = false;
        let mut summon_time = None;

        let forwarded;
        let reply = if resp_edns.as_ref().is_some_and(|(_, v)| *v > 0) {
            Reply::rcode(ResponseCode::BADVERS, false)
        } else if request.metadata.message_type != MessageType::Query {
            Reply::rcode(ResponseCode::FormErr, false)
        } else if request.metadata.op_code != OpCode::Query {
            Reply::rcode(ResponseCode::NotImp, false)
        } else if queries.len() != 1 {
            Reply::rcode(ResponseCode::FormErr, false)
        } else {
            let q = &queries[0];
            let qt = q.query_type();
            match zone.target(q.name()) {
                Target::Outside => {
                    if zone.upstream.is_empty() {
                        Reply::rcode(ResponseCode::Refused, false)
                    } else {
                        match forward::forward(&zone.upstream, request.as_slice()).await {
                            Ok(msg) => {
                                forwarded = msg;
                                Reply {
                                    rcode: forwarded.metadata.response_code,
                                    authoritative: forwarded.metadata.authoritative,
                                    recursion_available: forwarded.metadata.recursion_available,
                                    answers: forwarded.answers.iter().collect(),
                                    authorities: forwarded.authorities.iter().collect(),
                                    additionals: forwarded.additionals.iter().collect(),
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "forwarding failed");
                                Reply::rcode(ResponseCode::ServFail, false)
                            }
                        }
                    }
                }
                _ if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY => {
                    Reply::rcode(ResponseCode::Refused, false)
                }
                Target::Apex => match qt {
                    RecordType::SOA => {
                        let mut r = Reply::rcode(ResponseCode::NoError, true);
                        r.answers.push(&zone.soa);
                        r
                    }
                    RecordType::NS => {
                        let mut r = Reply::rcode(ResponseCode::NoError, true);
                        r.answers.push(&zone.ns);
                        if let Some(a) = &zone.ns_a {
                            r.additionals.push(a);
                        }
                        r
                    }
                    _ => Reply::negative(ResponseCode::NoError, &zone),
                },
                Target::NameServer => match (qt, &zone.ns_a) {
                    (RecordType::A, Some(a)) => {
                        let mut r = Reply::rcode(ResponseCode::NoError, true);
                        r.answers.push(a);
                        r
                    }
                    _ => Reply::negative(ResponseCode::NoError, &zone),
                },
                Target::NxDomain => Reply::negative(ResponseCode::NXDomain, &zone),
                Target::Service(name) => {
                    if !zone::summons(qt) {
                        Reply::negative(ResponseCode::NoError, &zone)
                    } else {
                        let t_summon = Instant::now();
                        match (self.registry.get(name), zone.service_record(name)) {
                            (Some(slot), Some(record)) => match self.registry.summon(&slot).await {
                                Ok((_, served)) => {
                                    cold = served != crate::registry::Served::Warm;
                                    if served == crate::registry::Served::Cold {
                                        summon_time = Some((t_summon.elapsed(), slot.name.clone()));
                                    }
                                    let mut r = Reply::rcode(ResponseCode::NoError, true);
                                    r.answers.push(record);
                                    r
                                }
                                Err(e) => {
                                    tracing::debug!(service = name, error = %e, "summon failed");
                                    Reply::rcode(ResponseCode::ServFail, true)
                                }
                            },
                            // Zone and registry are swapped separately on reload.
                            _ => Reply::negative(ResponseCode::NXDomain, &zone),
                        }
                    }
                }
            }
        };

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = reply.recursion_available;
        metadata.response_code = reply.rcode;
        // The question section is echoed as the client sent it, except when that would be
        // wrong: several questions (FORMERR: echo none) or names compressed with pointers
        // whose targets are not in our response (re-encode).
        let rebuilt;
        let queries = if queries.len() != 1 {
            rebuilt = Queries::new(Vec::new());
            &rebuilt
        } else if has_pointer(request.queries.as_bytes()) {
            rebuilt = Queries::new(queries.to_vec());
            &rebuilt
        } else {
            &request.queries
        };
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(e) = edns_ref {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter().copied(),
            reply.authorities.iter().copied(),
            std::iter::empty(),
            reply.additionals.iter().copied(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending DNS response");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        if cold {
            let total = t0.elapsed();
            self.metrics
                .summon_seconds
                .with_label_values(&["answer"])
                .observe(total.as_secs_f64());
            if let Some((s, service)) = summon_time {
                let dns = total.saturating_sub(s);
                self.metrics.cold_stage("dns", dns);
                tracing::debug!(
                    service = %service,
                    dns_us = dns.as_micros() as u64,
                    answer_us = total.as_micros() as u64,
                    "cold answer"
                );
            }
        }
        self.metrics
            .dns_queries
            .with_label_values(&[
                qtype.map(qtype_label).unwrap_or("none"),
                rcode_label(reply.rcode),
            ])
            .inc();
        info
    }
}
