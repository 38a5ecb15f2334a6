//! Protocol detection: decide from a connection's first bytes whether it carries HTTP/1.x,
//! HTTP/2 with prior knowledge, or opaque TCP.
//!
//! The decision itself ([`classify`]) is pure; [`detect`] reads with a deadline so that
//! server-speaks-first protocols (the client waits for a banner) become opaque TCP after
//! the detection timeout instead of stalling.

use crate::io::PrefixedIo;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface a prior-knowledge client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection was found to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
    /// Anything else, including a client that said nothing before the timeout.
    Opaque,
    /// A request line longer than the limit: refuse with 414.
    RequestLineTooLong,
}

/// Verdict on a (possibly partial) prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes decide the protocol.
    Done(Detected),
    /// The bytes so far are consistent with HTTP; read more.
    NeedMore,
}

/// Classifies the first bytes of a connection. `max_line` bounds the request line.
pub fn classify(buf: &[u8], max_line: usize) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Done(Detected::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    // Request line: METHOD SP request-target SP HTTP/1.x CRLF
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len == 0 || method_len > 32 {
        return Verdict::Done(Detected::Opaque);
    }
    if method_len == buf.len() {
        return Verdict::NeedMore;
    }
    if buf[method_len] != b' ' {
        return Verdict::Done(Detected::Opaque);
    }
    let control = |bytes: &[u8]| bytes.iter().any(|b| b.is_ascii_control());
    let newline = buf.iter().position(|b| *b == b'\n');
    // Past the limit the verdict is final, whatever follows: no request line, if a
    // control byte came within the limit, else one too long.
    let line_len = newline.unwrap_or(buf.len());
    if line_len > max_line {
        let within = &buf[method_len + 1..max_line.max(method_len + 1)];
        return Verdict::Done(if control(within) {
            Detected::Opaque
        } else {
            Detected::RequestLineTooLong
        });
    }
    match newline {
        Some(end) => {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            // Control bytes in it make it no request line, as they do before it ends.
            if control(&line[method_len + 1..]) {
                Verdict::Done(Detected::Opaque)
            } else if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Verdict::Done(Detected::Http1)
            } else {
                Verdict::Done(Detected::Opaque)
            }
        }
        None => {
            // A last `\r` may be the first half of the line's CRLF, split across reads.
            let rest = &buf[method_len + 1..];
            if control(rest.strip_suffix(b"\r").unwrap_or(rest)) {
                Verdict::Done(Detected::Opaque)
            } else {
                Verdict::NeedMore
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Outcome of [`detect`]: the protocol, whether the timeout decided it, and the stream
/// with every byte read so far put back in front.
pub struct Detection<T> {
    /// The protocol found.
    pub protocol: Detected,
    /// True when the client stayed silent (or undecided) until the deadline.
    pub timed_out: bool,
    /// The connection, replaying the bytes detection read.
    pub io: PrefixedIo<T>,
}

/// Reads from `io` until [`classify`] decides, the peer closes, or `timeout` passes.
pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
    max_line: usize,
) -> std::io::Result<Detection<T>> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let (protocol, timed_out) = loop {
        if let Verdict::Done(p) = classify(&buf, max_line) {
            break (p, false);
        }
        if buf.len() > max_line + 2 {
            break (Detected::RequestLineTooLong, false);
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => break (Detected::Opaque, false),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => break (Detected::Opaque, true),
        }
    };
    Ok(Detection {
        protocol,
        timed_out,
        io: PrefixedIo::new(buf.freeze(), io),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Detected::*;
    use Verdict::*;

    #[test]
    fn a_request_line_split_between_its_cr_and_lf_waits_for_the_lf() {
        // Found by the `detect` fuzz target: the CR alone used to decide Opaque.
        for line in [&b"GET / HTTP/1.1\r"[..], b"PRI * HTTP/1.0\r"] {
            assert_eq!(classify(line, 8192), NeedMore, "{line:?}");
        }
        assert_eq!(classify(b"PRI * HTTP/1.0\r\n", 8192), Done(Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\r\r", 8192), Done(Opaque));
        assert_eq!(classify(b"GET /\rx HTTP/1.1", 8192), Done(Opaque));
        // Nor does a control byte decide differently once the line is whole.
        assert_eq!(classify(b"PRT \0* HTTP/1.0", 8192), Done(Opaque));
        assert_eq!(classify(b"PRT \0* HTTP/1.0\r\n", 8192), Done(Opaque));
        // Nor once it runs past the limit.
        assert_eq!(classify(b"GET /\0aaaaaaaaaaaaaaaaaaaa", 8), Done(Opaque));
        // A line too long is too long with or without its end.
        assert_eq!(
            classify(b"GET /aaaaaaaaaaaaaaaaaaaa", 8),
            Done(RequestLineTooLong)
        );
        assert_eq!(
            classify(b"GET /aaaaaaaaaaaaaaaaaaaa\n", 8),
            Done(RequestLineTooLong)
        );
    }

    #[test]
    fn recognises_http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", 8192), Done(Http1));
        assert_eq!(
            classify(b"POST /x?y=1 HTTP/1.0\r\nHost: a\r\n", 8192),
            Done(Http1)
        );
        assert_eq!(classify(b"CONNECT a:443 HTTP/1.1\n", 8192), Done(Http1));
    }

    #[test]
    fn waits_for_more_when_undecided() {
        for partial in [
            &b""[..],
            b"G",
            b"GET",
            b"GET /",
            b"GET / HTTP/1",
            b"PRI * HT",
        ] {
            assert_eq!(classify(partial, 8192), NeedMore, "{partial:?}");
        }
    }

    #[test]
    fn recognises_h2_preface() {
        assert_eq!(classify(H2_PREFACE, 8192), Done(Http2));
    }

    #[test]
    fn everything_else_is_opaque() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..], // TLS ClientHello
            b"SSH-2.0-OpenSSH_9.2\r\n",   // a token, then no space
            b"GET / FTP/1.0\r\n",         // wrong version
            b"\x00\x01garbage",           // binary
            b"HELO example.org\r\n",      // SMTP verb: a line without HTTP version
            b"GET /\x01",                 // control byte inside the target
        ] {
            assert_eq!(classify(bytes, 8192), Done(Opaque), "{bytes:?}");
        }
    }

    #[test]
    fn long_request_lines_are_refused() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(classify(&line, 64), Done(RequestLineTooLong));
        line.extend(b" HTTP/1.1\r\n");
        assert_eq!(classify(&line, 64), Done(RequestLineTooLong));
    }

    #[tokio::test]
    async fn silent_client_becomes_opaque_after_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let d = detect(server, Duration::from_millis(50), 8192)
            .await
            .unwrap();
        assert_eq!(d.protocol, Opaque);
        assert!(d.timed_out);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn detected_bytes_are_replayed() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let d = detect(server, Duration::from_secs(5), 8192).await.unwrap();
        assert_eq!(d.protocol, Http1);
        assert_eq!(d.io.prefix(), b"GET / HTTP/1.1\r\n");
    }
}
