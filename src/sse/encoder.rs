//! Event -> bytes: `data:` lines for payloads, comment lines for heartbeats.

use bytes::{BufMut, Bytes, BytesMut};

/// A comment event: keeps proxies and clients from timing out while the upstream is silent.
/// Clients ignore it, so it does not commit any output.
pub const HEARTBEAT: Bytes = Bytes::from_static(b": keep-alive\n\n");

/// Appends one event carrying `payload` as its data. A payload with `\n` becomes several
/// `data:` lines, which a decoder joins back into the same payload.
pub fn put_data_event(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    for line in payload.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// One event carrying `payload` as its data.
pub fn data_event(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_data_event(&mut out, payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Decoder;

    #[test]
    fn encoded_payloads_decode_to_themselves() {
        for payload in ["{}", "", "a\nb", "\n\n", "data: [DONE]", " leading space"] {
            let mut decoder = Decoder::new(1024);
            decoder.feed(&data_event(payload.as_bytes()));
            let event = decoder.next_event().expect("valid").expect("one event");
            assert_eq!(&event.data[..], payload.as_bytes(), "payload {payload:?}");
            assert_eq!(decoder.next_event(), Ok(None), "exactly one event");
        }
    }
}
