//! Which protocol a new connection speaks, told from a peek at its first bytes: HTTP/2 with
//! prior knowledge (h2c) opens with the connection preface, anything else is HTTP/1.
//!
//! Peeking leaves the bytes in the socket, so hyper reads the request in one piece. (An
//! auto-detecting server that *reads* the preface's worth first hands the HTTP/1 parser those
//! bytes apart; the parser then grows its 8 KiB buffer to 16 KiB on its second read, on every
//! connection.)

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout_at};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first wait for the rest of a preface that arrived in pieces; each further wait doubles,
/// up to `PIECE_WAIT_MAX`, so a peer that sends a byte and stalls costs a few wakeups, not one
/// a millisecond.
const PIECE_WAIT: Duration = Duration::from_millis(1);
const PIECE_WAIT_MAX: Duration = Duration::from_millis(64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The protocol of `stream`, once its first bytes tell; `None` when the peer closed, failed or
/// sent nothing telling within `timeout` (the connection is then dropped unanswered, as a
/// header read timeout would).
pub async fn protocol(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; PREFACE.len()];
    let mut wait = PIECE_WAIT;
    loop {
        let seen = timeout_at(deadline, stream.peek(&mut first))
            .await
            .ok()?
            .ok()?;
        match judge(first.get(..seen)?) {
            Some(protocol) => return Some(protocol),
            None if seen == 0 => return None,
            // A strict prefix of the preface, so far: peek again once more may have come.
            None => {
                timeout_at(deadline, sleep(wait)).await.ok()?;
                wait = (wait * 2).min(PIECE_WAIT_MAX);
            }
        }
    }
}

/// What `first` (the bytes peeked so far) says, or `None` while it could still be either.
fn judge(first: &[u8]) -> Option<Protocol> {
    if first.is_empty() {
        None
    } else if !PREFACE.starts_with(first) {
        Some(Protocol::Http1)
    } else if first.len() == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_http2_and_anything_else_http1() {
        assert_eq!(judge(PREFACE), Some(Protocol::Http2));
        assert_eq!(
            judge(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(judge(b"GET"), Some(Protocol::Http1));
        assert_eq!(judge(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(judge(b"PRI * HTTP/2"), None, "a preface still arriving");
        assert_eq!(judge(b"P"), None, "POST or PRI: not yet known");
        assert_eq!(judge(b""), None);
    }

    #[tokio::test]
    async fn a_peek_waits_for_the_first_bytes_and_leaves_them_in_the_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (mut server, _)) = (client.expect("connect"), accepted.expect("accept"));
        let in_two_pieces = async {
            client.write_all(&PREFACE[..10]).await.expect("write");
            sleep(Duration::from_millis(20)).await;
            client.write_all(&PREFACE[10..]).await.expect("write");
        };
        let (told, ()) = tokio::join!(protocol(&server, Duration::from_secs(5)), in_two_pieces);
        assert_eq!(told, Some(Protocol::Http2), "a preface in two pieces");
        let mut read = [0u8; PREFACE.len()];
        server.read_exact(&mut read).await.expect("still there");
        assert_eq!(&read[..], PREFACE);

        let (_silent, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        let told = protocol(&server, Duration::from_millis(50)).await;
        assert_eq!(told, None, "nothing said");
    }
}
