//! `http`: a small HTTP/1.1 server unikernel.
//!
//! `GET /` serves a page naming the instance (`--name=`, default "http") with a count of the
//! requests served, `GET /healthz` answers "ok", `GET /count` the count alone; anything else
//! 404, malformed requests 400, requests over 8 KiB 431/413. Keep-alive, pipelining and up to
//! 32 concurrent connections. Network from the command line:
//! `--ipv4=ADDR/PREFIX [--ipv4-gateway=ADDR] [--port=N] [--name=NAME]`.
#![no_std]
#![no_main]

extern crate alloc;

mod response;
mod server;

use alloc::string::String;

use rt::{Arg, ArgError};

rt::main!(main);
rt::manifest!(net "service");

struct Options {
    net: rt::net::Config,
    port: u16,
    name: String,
}

fn parse_args() -> Result<Options, ArgError> {
    let mut opts = Options {
        net: rt::net::Config::default(),
        port: 80,
        name: "http".into(),
    };
    for arg in rt::args() {
        match arg {
            Arg::Opt { key, value } => {
                if opts.net.accept(key, value)? {
                    continue;
                }
                match key {
                    "port" => opts.port = rt::args::port(key, value)?,
                    "name" => {
                        let name = rt::args::require(key, value)?;
                        if name.len() > 64
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                        {
                            return Err(ArgError::new(key, "1-64 characters of [A-Za-z0-9._-]"));
                        }
                        opts.name = name.into();
                    }
                    _ => return Err(ArgError::new(key, "unknown option")),
                }
            }
            Arg::Word(w) => {
                return Err(ArgError::word(
                    w,
                    "unexpected argument (options are --KEY=VALUE)",
                ))
            }
        }
    }
    Ok(opts)
}

fn main() -> i32 {
    let opts = parse_args().unwrap_or_else(|e| rt::fail(e));
    let capacity = server::Server::capacity_for_heap();
    let mut stack = rt::net::Stack::new("service", &opts.net, capacity)
        .unwrap_or_else(|e| rt::fail(format_args!("net device \"service\": {e}")));
    let mut server =
        server::Server::new(opts.name.clone(), opts.port, capacity, &mut stack.sockets);
    rt::println!(
        "http: {} listening on {}/{}:{}, {} connections ({} us after entry)",
        opts.name,
        opts.net.address,
        opts.net.prefix,
        opts.port,
        server.capacity(),
        rt::time::monotonic_ns() / 1000
    );
    stack.run(|sockets| server.step(sockets))
}
