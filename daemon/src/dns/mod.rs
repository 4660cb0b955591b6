//! The DNS front: a hickory-server `RequestHandler` that answers the zone, summons services on
//! A queries and forwards or refuses everything else. Split as hickory's `Catalog` is:
//! [`DnsFront::dispatch`] (protocol checks, then what the name means), the lookups
//! ([`reply::zone_answer`], [`DnsFront::summon`], [`DnsFront::forward`]), response-rate limiting
//! ([`DnsFront::limit`]) and response building ([`respond::send`]).

mod forward;
pub mod local;
mod reply;
mod respond;
pub mod rrl;
pub mod tcp;
#[cfg(test)]
mod tests;
pub mod udp;
pub mod zone;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use prometheus::IntCounter;
use tokio::sync::Semaphore;

use crate::cluster::{Answer, Cluster};
use crate::metrics::Metrics;
use crate::registry::{Registry, Served};
use reply::Reply;
use rrl::{Rrl, Verdict};
pub use zone::{Target, Zone};

/// The zone currently served; swapped whole on reload.
pub type SharedZone = Arc<RwLock<Arc<Zone>>>;

/// Cheap to clone: the UDP server and the TCP accept loop share one front.
#[derive(Clone)]
pub struct DnsFront {
    zone: SharedZone,
    registry: Registry,
    metrics: Arc<Metrics>,
    /// One permit per forward in flight (`dns.max_forwards`, bounded by the fd budget).
    forwards: Arc<Semaphore>,
    rrl: Option<Arc<Rrl>>,
    rrl_dropped: IntCounter,
    rrl_slipped: IntCounter,
    forwards_capped: IntCounter,
    forwards_not_allowed: IntCounter,
    /// `[cluster]`: summons go through the cluster (ownership in etcd) instead of straight to
    /// the registry. `None`: standalone.
    cluster: Option<Arc<Cluster>>,
}

/// A cold summon's timing, for the `dns` stage and the answer histogram.
#[derive(Default)]
struct ColdSummon {
    cold: bool,
    /// Time inside the registry, for a boot (not a resume).
    summon: Option<(Duration, String)>,
}

impl DnsFront {
    /// `max_forwards` forwards may wait for an upstream at once; `rrl` limits UDP responses.
    pub fn new(
        zone: SharedZone,
        registry: Registry,
        metrics: Arc<Metrics>,
        max_forwards: usize,
        rrl: Option<Rrl>,
    ) -> DnsFront {
        let rrl_counter = |action| metrics.dns_rrl.with_label_values(&[action]);
        let rejected = |reason| metrics.dns_forwards_rejected.with_label_values(&[reason]);
        DnsFront {
            rrl_dropped: rrl_counter("dropped"),
            rrl_slipped: rrl_counter("slipped"),
            forwards_capped: rejected("cap"),
            forwards_not_allowed: rejected("not_allowed"),
            zone,
            registry,
            metrics,
            forwards: Arc::new(Semaphore::new(max_forwards)),
            rrl: rrl.map(Arc::new),
            cluster: None,
        }
    }

    /// Serves summons as a member of `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> DnsFront {
        self.cluster = Some(cluster);
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Protocol checks, then what the question's name means.
    async fn dispatch<'z>(
        &self,
        request: &Request,
        zone: &'z Zone,
        cold: &mut ColdSummon,
    ) -> Reply<'z> {
        if let Some(rcode) = protocol_error(request) {
            return Reply::rcode(rcode, false);
        }
        let q = &request.queries.queries()[0];
        let qtype = q.query_type();
        match zone.target(q.name()) {
            Target::Outside => self.forward(request, zone).await,
            _ if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY => {
                Reply::rcode(ResponseCode::Refused, false)
            }
            Target::Service(name) if zone::summons(qtype) => match &self.cluster {
                None => self.summon(name, zone, cold).await,
                Some(c) => self.summon_clustered(c, request, name, zone, cold).await,
            },
            target => reply::zone_answer(&target, qtype, zone),
        }
    }

    /// An A query for a service: boot or find its instance, answer its address.
    async fn summon<'z>(&self, name: &str, zone: &'z Zone, cold: &mut ColdSummon) -> Reply<'z> {
        let t_summon = Instant::now();
        let (Some(slot), Some(record)) = (self.registry.get(name), zone.service_record(name))
        else {
            // Zone and registry are swapped separately on reload.
            return Reply::negative(ResponseCode::NXDomain, zone);
        };
        match self.registry.summon(&slot).await {
            Ok((_, served)) => {
                cold.cold = served != Served::Warm;
                if served == Served::Cold {
                    cold.summon = Some((t_summon.elapsed(), slot.name.clone()));
                }
                Reply::answer(record, None)
            }
            Err(e) => {
                tracing::debug!(service = name, error = %e, "summon failed");
                Reply::rcode(ResponseCode::ServFail, true)
            }
        }
    }

    /// An A query for a service in a cluster: served here, answered for the host that runs
    /// it, or relayed to a host with room.
    async fn summon_clustered<'z>(
        &self,
        cluster: &Arc<Cluster>,
        request: &Request,
        name: &str,
        zone: &'z Zone,
        cold: &mut ColdSummon,
    ) -> Reply<'z> {
        let t_summon = Instant::now();
        let (Some(slot), Some(record)) = (self.registry.get(name), zone.service_record(name))
        else {
            return Reply::negative(ResponseCode::NXDomain, zone);
        };
        match cluster.summon(&slot, request.src().ip()).await {
            Ok(Answer::Here(served)) => {
                cold.cold = served != Served::Warm;
                if served == Served::Cold {
                    cold.summon = Some((t_summon.elapsed(), slot.name.clone()));
                }
                Reply::answer(record, None)
            }
            Ok(Answer::There) => Reply::answer(record, None),
            Ok(Answer::Relay(peer)) => {
                let Ok(_permit) = self.forwards.try_acquire() else {
                    self.forwards_capped.inc();
                    return Reply::rcode(ResponseCode::ServFail, true);
                };
                match forward::forward(&[peer], request.as_slice()).await {
                    // The peer is authoritative for the zone too: its answer goes out as it came.
                    Ok(msg) => Reply::upstream(msg),
                    Err(e) => {
                        tracing::debug!(service = name, %peer, error = %e, "relaying to a peer failed");
                        Reply::rcode(ResponseCode::ServFail, true)
                    }
                }
            }
            Err(e) => {
                tracing::debug!(service = name, error = %e, "cluster summon failed");
                Reply::rcode(ResponseCode::ServFail, true)
            }
        }
    }

    /// A name outside the zone: relayed to the upstreams for allowed sources, while a forward
    /// slot is free.
    async fn forward<'z>(&self, request: &Request, zone: &'z Zone) -> Reply<'z> {
        if zone.upstream.is_empty() {
            return Reply::rcode(ResponseCode::Refused, false);
        }
        if !zone.forward_allowed(request.src().ip()) {
            self.forwards_not_allowed.inc();
            return Reply::rcode(ResponseCode::Refused, false);
        }
        let Ok(_permit) = self.forwards.try_acquire() else {
            self.forwards_capped.inc();
            return Reply::rcode(ResponseCode::ServFail, false);
        };
        match forward::forward(&zone.upstream, request.as_slice()).await {
            Ok(msg) => Reply::upstream(msg),
            Err(e) => {
                tracing::debug!(error = %e, "forwarding failed");
                Reply::rcode(ResponseCode::ServFail, false)
            }
        }
    }

    /// Response-rate limiting: UDP only (a TCP client cannot spoof its address).
    fn limit(&self, request: &Request, zone: &Zone, reply: &Reply<'_>) -> Verdict {
        let Some(rrl) = &self.rrl else {
            return Verdict::Send;
        };
        if request.protocol() != Protocol::Udp {
            return Verdict::Send;
        }
        let class = reply.class();
        let question = request.queries.queries().first();
        let qtype = question.map_or(RecordType::NULL, |q| q.query_type());
        let name: &LowerName = match question {
            // Every NXDOMAIN under the zone shares the apex's bucket.
            Some(q) if class != rrl::ResponseClass::NxDomain || !zone.origin.zone_of(q.name()) => {
                q.name()
            }
            _ => &zone.origin,
        };
        let verdict = rrl.check(request.src().ip(), class, qtype, name);
        match verdict {
            Verdict::Send => {}
            Verdict::Slip => self.rrl_slipped.inc(),
            Verdict::Drop => self.rrl_dropped.inc(),
        }
        verdict
    }

    fn record(&self, request: &Request, rcode: ResponseCode, t0: Instant, cold: ColdSummon) {
        if cold.cold {
            let total = t0.elapsed();
            self.metrics
                .summon_seconds
                .with_label_values(&["answer"])
                .observe(total.as_secs_f64());
            if let Some((s, service)) = cold.summon {
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
        let question = request.queries.queries().first();
        let qtype = question.map(|q| q.query_type());
        // What hickory-server's own UDP loop logged per request (summond's loop does not).
        tracing::trace!(
            src = %request.src(),
            protocol = %request.protocol(),
            id = request.metadata.id,
            name = ?question.map(|q| q.name()),
            ?qtype,
            ?rcode,
            "DNS request answered"
        );
        self.metrics
            .dns_queries
            .with_label_values(&[qtype.map(qtype_label).unwrap_or("none"), rcode_label(rcode)])
            .inc();
    }
}

/// The rcode for a request summond does not answer from the zone: an EDNS version above 0,
/// not a query, an opcode other than QUERY, or not exactly one question.
fn protocol_error(request: &Request) -> Option<ResponseCode> {
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        Some(ResponseCode::BADVERS)
    } else if request.metadata.message_type != MessageType::Query {
        Some(ResponseCode::FormErr)
    } else if request.metadata.op_code != OpCode::Query {
        Some(ResponseCode::NotImp)
    } else if request.queries.queries().len() != 1 {
        Some(ResponseCode::FormErr)
    } else {
        None
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

#[async_trait::async_trait]
impl RequestHandler for DnsFront {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let t0 = Instant::now();
        let zone = self.zone.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut cold = ColdSummon::default();
        let reply = self.dispatch(request, &zone, &mut cold).await;
        let info = match self.limit(request, &zone, &reply) {
            Verdict::Send => respond::send(request, &reply, false, response_handle).await,
            Verdict::Slip => respond::send(request, &reply, true, response_handle).await,
            Verdict::Drop => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = reply.rcode;
                respond::not_sent(metadata)
            }
        };
        self.record(request, reply.rcode, t0, cold);
        info
    }
}
