//! What to answer: the rcode, the flags and the records of each section, decided from what the
//! name means (the zone's own answers here; summons and forwards in `mod.rs`).

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};

use super::rrl::ResponseClass;
use super::zone::{Target, Zone};

/// The records of a reply: at most one per section from the zone, or an upstream's message.
pub(super) enum Records<'z> {
    Zone {
        answer: Option<&'z Record>,
        authority: Option<&'z Record>,
        additional: Option<&'z Record>,
    },
    Upstream(Box<Message>),
}

pub(super) struct Reply<'z> {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub records: Records<'z>,
}

impl<'z> Reply<'z> {
    /// No records.
    pub fn rcode(rcode: ResponseCode, authoritative: bool) -> Self {
        Reply {
            rcode,
            authoritative,
            recursion_available: false,
            records: Records::Zone {
                answer: None,
                authority: None,
                additional: None,
            },
        }
    }

    /// An authoritative answer: `answer`, and `additional` data for it.
    pub fn answer(answer: &'z Record, additional: Option<&'z Record>) -> Self {
        Reply {
            records: Records::Zone {
                answer: Some(answer),
                authority: None,
                additional,
            },
            ..Reply::rcode(ResponseCode::NoError, true)
        }
    }

    /// NOERROR without data (or NXDOMAIN), with the SOA for negative caching.
    pub fn negative(rcode: ResponseCode, zone: &'z Zone) -> Self {
        Reply {
            records: Records::Zone {
                answer: None,
                authority: Some(&zone.soa),
                additional: None,
            },
            ..Reply::rcode(rcode, true)
        }
    }

    /// An upstream's answer, relayed with its rcode and flags.
    pub fn upstream(msg: Message) -> Self {
        Reply {
            rcode: msg.metadata.response_code,
            authoritative: msg.metadata.authoritative,
            recursion_available: msg.metadata.recursion_available,
            records: Records::Upstream(Box::new(msg)),
        }
    }

    fn has_answers(&self) -> bool {
        match &self.records {
            Records::Zone { answer, .. } => answer.is_some(),
            Records::Upstream(m) => !m.answers.is_empty(),
        }
    }

    /// The reply's class for response-rate limiting.
    pub fn class(&self) -> ResponseClass {
        match self.rcode {
            ResponseCode::NoError if self.has_answers() => ResponseClass::Positive,
            ResponseCode::NoError => ResponseClass::NoData,
            ResponseCode::NXDomain => ResponseClass::NxDomain,
            _ => ResponseClass::Error,
        }
    }
}

/// The zone's own answer for a name inside it that summons nothing.
pub(super) fn zone_answer<'z>(target: &Target<'_>, qtype: RecordType, zone: &'z Zone) -> Reply<'z> {
    match (target, qtype) {
        (Target::Apex, RecordType::SOA) => Reply::answer(&zone.soa, None),
        (Target::Apex, RecordType::NS) => Reply::answer(&zone.ns, zone.ns_a.as_ref()),
        (Target::NameServer, RecordType::A) => match &zone.ns_a {
            Some(a) => Reply::answer(a, None),
            None => Reply::negative(ResponseCode::NoError, zone),
        },
        (Target::NxDomain | Target::Outside, _) => Reply::negative(ResponseCode::NXDomain, zone),
        // The apex, the name server and services for other types: NODATA.
        _ => Reply::negative(ResponseCode::NoError, zone),
    }
}
