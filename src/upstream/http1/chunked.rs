//! Incremental `transfer-encoding: chunked` decoder: the data of a chunk is handed out as
//! zero-copy slices of the read buffer, at any split of the input; control lines are bounded.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE_BYTES: usize = 4096;

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
    #[error("chunk control line too long")]
    LineTooLong,
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
    Data {
        remaining: u64,
    },
    /// After a chunk's data: an optional CR, then LF.
    DataEnd {
        seen_cr: bool,
    },
    Trailer {
        line: usize,
    },
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size {
                size: 0,
                digits: 0,
                extension: false,
                line: 0,
            },
        }
    }
}

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
                    self.state = step(self.state, byte)?;
                }
            }
        }
    }
}

/// One byte of a control line (size line, data terminator, trailer).
fn step(state: State, byte: u8) -> Result<State, ChunkedError> {
    match state {
        State::Size {
            size,
            digits,
            extension,
            line,
        } => {
            if line >= MAX_LINE_BYTES {
                return Err(ChunkedError::LineTooLong);
            }
            match byte {
                b'\n' if digits == 0 => Err(ChunkedError::BadSize),
                b'\n' if size == 0 => Ok(State::Trailer { line: 0 }),
                b'\n' => Ok(State::Data { remaining: size }),
                _ if extension => Ok(State::Size {
                    size,
                    digits,
                    extension,
                    line: line + 1,
                }),
                b';' | b' ' | b'\t' | b'\r' => Ok(State::Size {
                    size,
                    digits,
                    extension: true,
                    line: line + 1,
                }),
                _ => {
                    let digit = (byte as char).to_digit(16).ok_or(ChunkedError::BadSize)?;
                    if digits >= 15 {
                        return Err(ChunkedError::BadSize);
                    }
                    Ok(State::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                        extension,
                        line: line + 1,
                    })
                }
            }
        }
        State::DataEnd { seen_cr } => match byte {
            b'\r' if !seen_cr => Ok(State::DataEnd { seen_cr: true }),
            b'\n' => Ok(State::Size {
                size: 0,
                digits: 0,
                extension: false,
                line: 0,
            }),
            _ => Err(ChunkedError::BadTerminator),
        },
        State::Trailer { line } => match byte {
            b'\n' if line == 0 => Ok(State::Done),
            b'\n' => Ok(State::Trailer { line: 0 }),
            b'\r' => Ok(State::Trailer { line }),
            _ if line >= MAX_LINE_BYTES => Err(ChunkedError::LineTooLong),
            _ => Ok(State::Trailer { line: line + 1 }),
        },
        State::Data { .. } | State::Done => unreachable!("data and done are handled by decode"),
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
    fn bare_lf_and_uppercase_hex_are_accepted() {
        assert_eq!(
            decode_parts(&[b"B\nhello world\n0\n\n"]),
            Ok((b"hello world".to_vec(), true))
        );
    }

    #[test]
    fn an_unfinished_body_has_not_ended() {
        assert_eq!(decode_parts(&[b"5\r\nhel"]), Ok((b"hel".to_vec(), false)));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        let rows: [(&[u8], ChunkedError); 5] = [
            (b"zz\r\n", ChunkedError::BadSize),
            (b"\r\n", ChunkedError::BadSize),
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
}
