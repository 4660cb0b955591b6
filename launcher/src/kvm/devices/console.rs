//! Console output: PUTS bytes cut into lines for the instance's event sink.

use crate::backend::{EventSink, InstanceEvent};

/// A line longer than this is delivered in pieces, so a guest cannot grow host memory unbounded.
const MAX_LINE: usize = 4096;

/// Collects console bytes and delivers each complete line as `InstanceEvent::Console`.
#[derive(Default)]
pub struct Console {
    line: Vec<u8>,
}

impl Console {
    pub fn new() -> Self {
        Console { line: Vec::new() }
    }

    /// Adds guest output; emits every line it completes.
    pub fn write(&mut self, mut bytes: &[u8], sink: &EventSink) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.line.len();
            let take = bytes.len().min(room);
            match bytes[..take].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.line.extend_from_slice(&bytes[..nl]);
                    self.emit(sink);
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    self.line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.line.len() == MAX_LINE {
                        self.emit(sink);
                    }
                }
            }
        }
    }

    /// Delivers a pending partial line (at guest exit).
    pub fn flush(&mut self, sink: &EventSink) {
        if !self.line.is_empty() {
            self.emit(sink);
        }
    }

    fn emit(&mut self, sink: &EventSink) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        sink(InstanceEvent::Console(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn splits_lines_and_bounds_them() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink: EventSink = Arc::new(move |e| g.lock().unwrap().push(e));
        let mut c = Console::new();
        c.write(b"hel", &sink);
        c.write(b"lo\r\nworld\n\npart", &sink);
        c.write(&vec![b'x'; MAX_LINE + 1], &sink);
        c.flush(&sink);
        let got = got.lock().unwrap();
        let lines: Vec<String> = got
            .iter()
            .map(|e| match e {
                InstanceEvent::Console(s) => s.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(lines[0], "hello");
        assert_eq!(lines[1], "world");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3].len(), MAX_LINE);
        assert!(lines[3].starts_with("partx"));
        assert_eq!(lines[4].len(), 5);
        assert_eq!(lines.len(), 5);
    }
}
