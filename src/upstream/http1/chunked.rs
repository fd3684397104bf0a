//! Incremental `transfer-encoding: chunked` decoder (RFC 9112 section 7.1): the data of a
//! chunk is handed out as zero-copy slices of the read buffer, at any split of the input.
//! Framing is strict (every line ends in CRLF) and bounded: one control line, all chunk
//! extensions of a body, and its trailers each have a byte cap, and trailers a field cap, so an
//! upstream cannot make the gateway read (or spin) without end.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE_BYTES: usize = 4096;
/// Chunk-extension bytes accepted over a whole body (hyper's bound).
const MAX_EXTENSION_BYTES: usize = 16 * 1024;
/// Trailer bytes accepted after the last chunk (hyper's bound).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Trailer fields accepted after the last chunk (hyper's bound).
const MAX_TRAILER_FIELDS: usize = 100;

/// What the decoder could take from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece; read more.
    NeedMore,
    /// The terminating chunk and trailers were read: the body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("malformed chunk size line")]
    BadSize,
    #[error("chunk data not followed by CRLF")]
    BadTerminator,
    #[error("a chunk control line does not end in CRLF")]
    BareLineFeed,
    #[error("chunk control line too long")]
    LineTooLong,
    #[error("too many chunk-extension bytes")]
    TooManyExtensions,
    #[error("too many trailer bytes or fields")]
    TooManyTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `extension` once a `;` or whitespace ended the digits.
    Size {
        size: u64,
        digits: u8,
        extension: bool,
        line: usize,
    },
    /// A CR ended a line; LF must follow.
    LineEnd {
        next: AfterLine,
    },
    Data {
        remaining: u64,
    },
    /// After a chunk's data: CR, then LF.
    DataEnd {
        seen_cr: bool,
    },
    Trailer {
        line: usize,
    },
    Done,
}

/// Where a control line that just ended leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterLine {
    Data(u64),
    Trailers,
    /// A trailer field line ended (`true`) or the empty line that ends the trailers (`false`).
    Trailer(bool),
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    extension_bytes: usize,
    trailer_bytes: usize,
    trailer_fields: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: SIZE_START,
            extension_bytes: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
        }
    }
}

const SIZE_START: State = State::Size {
    size: 0,
    digits: 0,
    extension: false,
    line: 0,
};

impl ChunkedDecoder {
    /// Takes the next piece from `buf`, consuming what it decodes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                _ => {
                    let Some(&byte) = buf.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(1);
                    self.state = self.step(byte)?;
                }
            }
        }
    }

    /// One byte of a control line (size line, data terminator, trailer).
    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        match self.state {
            State::Size {
                size,
                digits,
                extension,
                line,
            } => size_line(
                size,
                digits,
                extension,
                line,
                byte,
                &mut self.extension_bytes,
            ),
            State::LineEnd { next } => match (byte, next) {
                (b'\n', AfterLine::Data(size)) => Ok(State::Data { remaining: size }),
                (b'\n', AfterLine::Trailers | AfterLine::Trailer(true)) => {
                    Ok(State::Trailer { line: 0 })
                }
                (b'\n', AfterLine::Trailer(false)) => Ok(State::Done),
                _ => Err(ChunkedError::BareLineFeed),
            },
            State::DataEnd { seen_cr } => match byte {
                b'\r' if !seen_cr => Ok(State::DataEnd { seen_cr: true }),
                b'\n' if seen_cr => Ok(SIZE_START),
                _ => Err(ChunkedError::BadTerminator),
            },
            State::Trailer { line } => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(ChunkedError::TooManyTrailers);
                }
                match byte {
                    b'\r' => {
                        if line > 0 {
                            self.trailer_fields += 1;
                            if self.trailer_fields > MAX_TRAILER_FIELDS {
                                return Err(ChunkedError::TooManyTrailers);
                            }
                        }
                        Ok(State::LineEnd {
                            next: AfterLine::Trailer(line > 0),
                        })
                    }
                    b'\n' => Err(ChunkedError::BareLineFeed),
                    _ if line >= MAX_LINE_BYTES => Err(ChunkedError::LineTooLong),
                    _ => Ok(State::Trailer { line: line + 1 }),
                }
            }
            State::Data { .. } | State::Done => {
                unreachable!("data and done are handled by decode")
            }
        }
    }
}

/// One byte of a chunk-size line: hex digits, then optional extensions, then CRLF.
fn size_line(
    size: u64,
    digits: u8,
    extension: bool,
    line: usize,
    byte: u8,
    extension_bytes: &mut usize,
) -> Result<State, ChunkedError> {
    if line >= MAX_LINE_BYTES {
        return Err(ChunkedError::LineTooLong);
    }
    let next = |size, digits, extension| State::Size {
        size,
        digits,
        extension,
        line: line + 1,
    };
    match byte {
        b'\r' if digits == 0 => Err(ChunkedError::BadSize),
        b'\r' if size == 0 => Ok(State::LineEnd {
            next: AfterLine::Trailers,
        }),
        b'\r' => Ok(State::LineEnd {
            next: AfterLine::Data(size),
        }),
        b'\n' => Err(ChunkedError::BareLineFeed),
        _ if extension => {
            *extension_bytes += 1;
            if *extension_bytes > MAX_EXTENSION_BYTES {
                return Err(ChunkedError::TooManyExtensions);
            }
            Ok(next(size, digits, true))
        }
        b';' | b' ' | b'\t' if digits > 0 => Ok(next(size, digits, true)),
        _ => {
            let digit = (byte as char).to_digit(16).ok_or(ChunkedError::BadSize)?;
            if digits >= 15 {
                return Err(ChunkedError::BadSize);
            }
            Ok(next(size * 16 + u64::from(digit), digits + 1, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `parts` fed one after another; returns the body and whether it ended.
    fn decode_parts(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((body, true)),
                }
            }
        }
        Ok((body, false))
    }

    #[test]
    fn decodes_at_every_split_point() {
        let wire =
            b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(
                decode_parts(&[a, b]),
                Ok((b"hello 0123456789".to_vec(), true)),
                "split at {split}"
            );
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(
            decode_parts(&bytewise),
            Ok((b"hello 0123456789".to_vec(), true))
        );
    }

    #[test]
    fn uppercase_hex_is_accepted_and_bare_line_feeds_are_not() {
        assert_eq!(
            decode_parts(&[b"B\r\nhello world\r\n0\r\n\r\n"]),
            Ok((b"hello world".to_vec(), true))
        );
        let bare: [&[u8]; 4] = [
            b"B\nhello world\r\n",
            b"5\r\nhello\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
        ];
        for wire in bare {
            assert!(decode_parts(&[wire]).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded_per_body() {
        let chunk = [b"1;".as_slice(), &[b'x'; 4000], b"\r\na\r\n"].concat();
        let many_extensions: Vec<&[u8]> = std::iter::repeat_n(chunk.as_slice(), 5).collect();
        assert_eq!(
            decode_parts(&many_extensions),
            Err(ChunkedError::TooManyExtensions),
            "16 KiB of extensions over a body"
        );
        let field = b"x-t: 1\r\n".as_slice();
        let many_fields = [&[b"0\r\n".as_slice()][..], &vec![field; 101]].concat();
        assert_eq!(
            decode_parts(&many_fields),
            Err(ChunkedError::TooManyTrailers),
            "more than 100 trailer fields"
        );
        let long = [b"x-t: ".as_slice(), &[b'v'; 3000], b"\r\n"].concat();
        let many_bytes = [&[b"0\r\n".as_slice()][..], &[long.as_slice(); 6]].concat();
        assert_eq!(
            decode_parts(&many_bytes),
            Err(ChunkedError::TooManyTrailers),
            "more than 16 KiB of trailers"
        );
    }

    #[test]
    fn an_unfinished_body_has_not_ended() {
        assert_eq!(decode_parts(&[b"5\r\nhel"]), Ok((b"hel".to_vec(), false)));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        let rows: [(&[u8], ChunkedError); 6] = [
            (b"zz\r\n", ChunkedError::BadSize),
            (b"\r\n", ChunkedError::BadSize),
            (b";ext\r\n", ChunkedError::BadSize),
            (b"3\r\nabcX", ChunkedError::BadTerminator),
            (b"fffffffffffffffff\r\n", ChunkedError::BadSize),
            (&[b'1'; 5000], ChunkedError::BadSize),
        ];
        for (wire, error) in rows {
            assert_eq!(
                decode_parts(&[wire]),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(&wire[..wire.len().min(20)])
            );
        }
        let long_extension = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert_eq!(
            decode_parts(&[&long_extension]),
            Err(ChunkedError::LineTooLong)
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::{cases, mostly, split_at};

        fn chunked_bytes() -> impl Strategy<Value = Vec<u8>> {
            mostly(
                vec![
                    b"5\r\nhello\r\n",
                    b"0\r\n",
                    b"\r\n",
                    b"1;x=y\r\n",
                    b"a",
                    b"\n",
                    b"x-t: 1\r\n",
                    b"F",
                    b"\r",
                ],
                48,
            )
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn any_split_gives_the_same_body(
                bytes in chunked_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let whole = decode_parts(&[&bytes]);
                prop_assert_eq!(decode_parts(&split_at(&bytes, &cuts)), whole);
            }
        }
    }
}
