//! Answering one raw DNS packet: parse (FORMERR on malformed input, as hickory-server does),
//! the handler, encoding (truncated to the client's payload size over UDP). The UDP loop
//! ([`super::udp`]) and the TCP accept loop ([`super::tcp`]) answer every message through it;
//! unit tests and the fuzz target too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use super::DnsFront;

/// Encodes the response as hickory-server's own response handle does: over UDP no larger than
/// the response's EDNS payload size (512 bytes without EDNS), truncated with TC=1 beyond it.
#[derive(Clone)]
struct Capture {
    out: Arc<Mutex<Option<Vec<u8>>>>,
    protocol: Protocol,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let max_size = match self.protocol {
            Protocol::Udp => response.edns().map_or(512, |e| e.max_payload()),
            _ => u16::MAX,
        };
        let mut buf = Vec::with_capacity(512);
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_max_size(max_size);
        let info = match response.destructive_emit(&mut enc) {
            Ok(info) => info,
            Err(e) => {
                // As hickory-server does: a bare SERVFAIL rather than nothing.
                tracing::debug!(error = %e, "encoding DNS response");
                buf.clear();
                let mut meta = Metadata::new(id, MessageType::Response, OpCode::Query);
                meta.response_code = ResponseCode::ServFail;
                let h = Header {
                    metadata: meta,
                    counts: Default::default(),
                };
                h.emit(&mut BinEncoder::new(&mut buf))
                    .map_err(|e| NetError::from(e.to_string()))?;
                ResponseInfo::from(h)
            }
        };
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        Ok(info)
    }
}

/// The bytes summond would send back for `packet` arriving over UDP from loopback, or `None`
/// if it would send nothing.
pub async fn answer(front: &DnsFront, packet: &[u8]) -> Option<Vec<u8>> {
    let src: SocketAddr = "127.0.0.1:53000".parse().expect("literal");
    answer_from(front, packet.to_vec(), src, Protocol::Udp).await
}

/// The bytes summond sends back for `packet` from `src` over `protocol`.
pub async fn answer_from(
    front: &DnsFront,
    packet: Vec<u8>,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(&packet);
    // hickory-server drops packets whose header does not parse.
    let header = Header::read(&mut decoder).ok()?;
    match Request::from_bytes(packet, src, protocol) {
        Ok(request) => {
            if request.metadata.message_type == MessageType::Response {
                return None;
            }
            let capture = Capture {
                out: Arc::default(),
                protocol,
            };
            front
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
            let out = capture.out.lock().unwrap_or_else(|p| p.into_inner()).take();
            out
        }
        Err(_) => {
            // As the server does: FORMERR echoing the header's id and opcode.
            let mut meta = Metadata::new(header.metadata.id, MessageType::Response, OpCode::Query);
            meta.op_code = header.metadata.op_code;
            meta.response_code = ResponseCode::FormErr;
            let h = Header {
                metadata: meta,
                counts: Default::default(),
            };
            let mut buf = Vec::new();
            let mut enc = BinEncoder::new(&mut buf);
            h.emit(&mut enc).ok()?;
            Some(buf)
        }
    }
}
