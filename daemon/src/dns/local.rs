//! Answering one raw DNS packet in-process: the same path a UDP query takes through
//! hickory-server (parse, FORMERR on malformed input, the handler, encoding). The TCP accept
//! loop ([`super::tcp`]) answers its messages through it; unit tests and the fuzz target too.

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

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

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
        let mut buf = Vec::with_capacity(512);
        let mut enc = BinEncoder::new(&mut buf);
        let info = response
            .destructive_emit(&mut enc)
            .map_err(|e| NetError::from(e.to_string()))?;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        Ok(info)
    }
}

/// The bytes summond would send back for `packet` arriving over UDP from loopback, or `None`
/// if it would send nothing.
pub async fn answer(front: &DnsFront, packet: &[u8]) -> Option<Vec<u8>> {
    let src: SocketAddr = "127.0.0.1:53000".parse().expect("literal");
    answer_from(front, packet, src, Protocol::Udp).await
}

/// The bytes summond sends back for `packet` from `src` over `protocol` (never truncated:
/// over UDP the server's own path truncates to the client's payload size, this does not).
pub async fn answer_from(
    front: &DnsFront,
    packet: &[u8],
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(packet);
    // hickory-server drops packets whose header does not parse.
    let header = Header::read(&mut decoder).ok()?;
    match Request::from_bytes(packet.to_vec(), src, protocol) {
        Ok(request) => {
            if request.metadata.message_type == MessageType::Response {
                return None;
            }
            let capture = Capture::default();
            front
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
            let out = capture.0.lock().unwrap_or_else(|p| p.into_inner()).take();
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
