//! The DNS request path: any bytes through hickory's parser and summond's handler. Whatever
//! comes back must itself be a well-formed DNS message with the query's id.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use summon_daemon::config::Config;
use summon_daemon::dns::local::answer;
use summon_daemon::dns::DnsFront;

struct Env {
    rt: tokio::runtime::Runtime,
    front: DnsFront,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let img = std::env::temp_dir().join("summon-fuzz.hvt");
        std::fs::write(&img, b"x").unwrap();
        let src = format!(
            "[dns]\nlisten = [\"127.0.0.1:5300\"]\nzone = \"svc.test.\"\n\
             [network]\nsubnet = \"10.77.0.0/16\"\ngateway = \"10.77.0.1\"\n\
             [limits]\nbackoff_initial = \"1h\"\n\
             [[service]]\nname = \"web\"\nimage = \"{}\"\nip = \"10.77.0.10\"\n",
            img.display()
        );
        let config = Config::parse(&src, std::path::Path::new("/")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let front = rt.block_on(async { summon_daemon::testkit::front(&config) });
        Env { rt, front }
    })
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    if let Some(out) = env.rt.block_on(answer(&env.front, data)) {
        let m = hickory_proto::op::Message::from_vec(&out)
            .expect("summond emitted a malformed message");
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    }
});
