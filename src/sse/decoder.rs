//! Incremental SSE decoder: bytes in, events out, memory bounded by `max_event_bytes`.
//!
//! Follows the WHATWG event-stream grammar: lines end in `\n`, `\r\n` or `\r` (a `\r\n` split
//! across two reads is one terminator), `data:` lines of one event are joined with `\n`, lines
//! starting with `:` are comments, and an event is dispatched at a blank line only when it has
//! data, so an event made only of `id:` or `retry:` never reaches a caller.

use bytes::{Buf, Bytes, BytesMut};

/// One dispatched event: its `event:` name (empty for the default "message") and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Bytes,
    pub data: Bytes,
}

/// The data of the event being read. The usual single `data:` line is kept as a zero-copy
/// slice of the input; only a second line makes the decoder join lines into its own buffer.
#[derive(Debug, Default)]
enum Data {
    #[default]
    None,
    Line(Bytes),
    Lines(BytesMut),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Line(line) => line.len(),
            Self::Lines(joined) => joined.len(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("an event exceeded {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Feed bytes with [`Decoder::feed`], then take events with [`Decoder::next_event`] until it
/// returns `None`; only then feed more. Holds at most one partial line and one partial event.
#[derive(Debug)]
pub struct Decoder {
    pending: BytesMut,
    data: Data,
    name: Bytes,
    skip_leading_lf: bool,
    max_event_bytes: usize,
}

impl Decoder {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            data: Data::None,
            name: Bytes::new(),
            skip_leading_lf: false,
            max_event_bytes,
        }
    }

    /// Appends received bytes; they are parsed lazily by `next_event`.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete event, `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, DecodeError> {
        loop {
            if self.skip_leading_lf && !self.pending.is_empty() {
                if self.pending[0] == b'\n' {
                    self.pending.advance(1);
                }
                self.skip_leading_lf = false;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.pending) else {
                self.check_size(self.pending.len())?;
                return Ok(None);
            };
            // A whole line is bounded like a partial one, so a long line is refused however the
            // input was split.
            self.check_size(end)?;
            let line = self.pending.split_to(end).freeze();
            self.consume_terminator();
            if let Some(event) = self.process_line(line)? {
                return Ok(Some(event));
            }
        }
    }

    /// True when no partial line or event is held: the stream ended on an event boundary.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && matches!(self.data, Data::None)
    }

    fn consume_terminator(&mut self) {
        let terminator = self.pending[0];
        self.pending.advance(1);
        if terminator == b'\r' {
            match self.pending.first() {
                Some(b'\n') => self.pending.advance(1),
                Some(_) => {}
                None => self.skip_leading_lf = true,
            }
        }
    }

    fn process_line(&mut self, line: Bytes) -> Result<Option<Event>, DecodeError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(colon) => {
                let value = line.slice(colon + 1..);
                let value = match value.first() {
                    Some(b' ') => value.slice(1..),
                    _ => value,
                };
                (line.slice(..colon), value)
            }
            None => (line, Bytes::new()),
        };
        match &field[..] {
            b"data" => {
                self.check_size(self.data.len() + value.len() + 1)?;
                self.data = match std::mem::take(&mut self.data) {
                    Data::None => Data::Line(value),
                    Data::Line(first) => {
                        let mut joined = BytesMut::with_capacity(first.len() + value.len() + 1);
                        joined.extend_from_slice(&first);
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(&value);
                        Data::Lines(joined)
                    }
                    Data::Lines(mut joined) => {
                        joined.extend_from_slice(b"\n");
                        joined.extend_from_slice(&value);
                        Data::Lines(joined)
                    }
                };
            }
            b"event" => self.name = value,
            // `id`, `retry` and unknown fields carry nothing a relay forwards.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let name = std::mem::take(&mut self.name);
        let data = match std::mem::take(&mut self.data) {
            Data::None => return None,
            Data::Line(line) => line,
            Data::Lines(joined) => joined.freeze(),
        };
        Some(Event { name, data })
    }

    fn check_size(&self, bytes: usize) -> Result<(), DecodeError> {
        if bytes > self.max_event_bytes {
            return Err(DecodeError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::golden;

    const MAX: usize = 64 * 1024;

    fn decode_in_parts(parts: &[&[u8]]) -> Vec<Event> {
        let mut decoder = Decoder::new(MAX);
        let mut events = Vec::new();
        for part in parts {
            decoder.feed(part);
            while let Some(event) = decoder.next_event().expect("input is within limits") {
                events.push(event);
            }
        }
        events
    }

    fn data_of(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8(e.data.to_vec()).expect("test data is UTF-8"))
            .collect()
    }

    #[test]
    fn every_split_point_of_every_golden_gives_the_same_events() {
        for name in [
            "openai-chat.sse",
            "mixed-line-endings.sse",
            "vllm-in-band-error.sse",
            "litellm-usage.sse",
        ] {
            let bytes = golden(name);
            let whole = decode_in_parts(&[&bytes]);
            assert!(!whole.is_empty(), "{name} has events");
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                assert_eq!(decode_in_parts(&[a, b]), whole, "{name} split at {split}");
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(decode_in_parts(&bytewise), whole, "{name} byte by byte");
        }
    }

    #[test]
    fn mixed_line_endings_multiline_data_and_comments() {
        let events = decode_in_parts(&[&golden("mixed-line-endings.sse")]);
        assert_eq!(
            data_of(&events),
            [
                "first",
                "two\nlines",
                "cr-terminated",
                "crlf",
                "no-space",
                "",
                "[DONE]"
            ]
        );
        assert_eq!(&events[1].name[..], b"update");
        assert!(events[0].name.is_empty(), "default event name is empty");
    }

    #[test]
    fn events_without_data_are_never_dispatched() {
        let events =
            decode_in_parts(&[b"id: 7\n\nretry: 10\n\n: comment\n\nevent: x\n\ndata: y\n\n"]);
        assert_eq!(data_of(&events), ["y"]);
        assert!(
            events[0].name.is_empty(),
            "event name resets after an empty event"
        );
    }

    #[test]
    fn an_unterminated_event_is_held_not_dispatched() {
        let mut decoder = Decoder::new(MAX);
        decoder.feed(b"data: partial");
        assert_eq!(decoder.next_event(), Ok(None));
        assert!(!decoder.is_idle(), "a partial line is pending");
        decoder.feed(b"\n\n");
        let event = decoder
            .next_event()
            .expect("valid")
            .expect("event completes");
        assert_eq!(&event.data[..], b"partial");
        assert!(decoder.is_idle());
    }

    #[test]
    fn oversized_events_fail_instead_of_growing() {
        let mut decoder = Decoder::new(16);
        decoder.feed(b"data: 0123456789abcdef");
        assert_eq!(
            decoder.next_event(),
            Err(DecodeError::EventTooLarge { limit: 16 }),
            "an endless line is cut off"
        );
        let mut decoder = Decoder::new(16);
        decoder.feed(b"data: 0123456789\ndata: 0123456789\n");
        assert_eq!(
            decoder.next_event(),
            Err(DecodeError::EventTooLarge { limit: 16 }),
            "many data lines are cut off"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::test_support::{cases, mostly, split_at};

        fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
            mostly(
                vec![
                    b"data:",
                    b"data: ",
                    b"event: x",
                    b":",
                    b"id: 1",
                    b"\n",
                    b"\r",
                    b"\r\n",
                    b"[DONE]",
                    b"{\"a\":1}",
                    b"  ",
                ],
                48,
            )
        }

        /// Events until the first error, and that error; with the decoder's held bytes checked
        /// against its cap after every step.
        fn decode(parts: &[&[u8]], max: usize) -> (Vec<Event>, Option<DecodeError>) {
            let mut decoder = Decoder::new(max);
            let mut events = Vec::new();
            for part in parts {
                decoder.feed(part);
                loop {
                    match decoder.next_event() {
                        Ok(Some(event)) => {
                            assert!(event.data.len() <= max, "an event over the cap");
                            events.push(event);
                        }
                        Ok(None) => break,
                        Err(error) => return (events, Some(error)),
                    }
                }
                assert!(decoder.pending.len() <= max, "a partial line over the cap");
                assert!(decoder.data.len() <= max, "a partial event over the cap");
            }
            (events, None)
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn any_split_gives_the_same_events_within_the_cap(
                bytes in sse_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                max in 1usize..96,
            ) {
                let whole = decode(&[&bytes], max);
                prop_assert_eq!(decode(&split_at(&bytes, &cuts), max), whole);
            }
        }
    }
}
