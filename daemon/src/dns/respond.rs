//! Building the response message from a [`Reply`] and sending it.

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecoder, BinEncodable, BinEncoder};
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

use super::reply::{Records, Reply};

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

/// The question section to echo: as the client sent it, except when that would be wrong:
/// several questions (FORMERR: echo none) or names compressed with pointers whose targets
/// are not in our response (re-encoded uncompressed). `None`: echo the request's own.
fn rebuilt_question(request: &Request) -> Option<Queries> {
    let queries = request.queries.queries();
    let mut wire = Vec::new();
    if queries.len() == 1 {
        if !has_pointer(request.queries.as_bytes()) {
            return None;
        }
        let mut enc = BinEncoder::new(&mut wire);
        if queries[0].emit(&mut enc).is_err() {
            wire.clear();
        }
    }
    // Our own uncompressed encoding of at most one question always reads back; should it
    // not, an empty question section is still a valid response.
    let n = usize::from(!wire.is_empty());
    Queries::read(&mut BinDecoder::new(&wire), n)
        .or_else(|_| Queries::read(&mut BinDecoder::new(&[]), 0))
        .ok()
}

/// Sends `reply` (with no records and TC=1 when `truncated`: an RRL slip).
pub(super) async fn send<R: ResponseHandler>(
    request: &Request,
    reply: &Reply<'_>,
    truncated: bool,
    mut handle: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = reply.authoritative;
    metadata.recursion_available = reply.recursion_available;
    metadata.response_code = reply.rcode;
    metadata.truncation = truncated;
    let edns = request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().max(512));
        e.set_version(0);
        e
    });
    let rebuilt = rebuilt_question(request);
    let mut builder =
        MessageResponseBuilder::new(rebuilt.as_ref().unwrap_or(&request.queries), None);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let none = || None::<&Record>.into_iter();
    let sent = match &reply.records {
        _ if truncated => {
            handle
                .send_response(builder.build(metadata, none(), none(), none(), none()))
                .await
        }
        Records::Zone {
            answer,
            authority,
            additional,
        } => {
            let r = builder.build(
                metadata,
                answer.iter().copied(),
                authority.iter().copied(),
                none(),
                additional.iter().copied(),
            );
            handle.send_response(r).await
        }
        Records::Upstream(m) => {
            let r = builder.build(
                metadata,
                m.answers.iter(),
                m.authorities.iter(),
                std::iter::empty(),
                m.additionals.iter(),
            );
            handle.send_response(r).await
        }
    };
    match sent {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending DNS response");
            not_sent(metadata)
        }
    }
}

/// What the server reports for a response that was not sent (dropped by RRL, or failed).
pub(super) fn not_sent(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
