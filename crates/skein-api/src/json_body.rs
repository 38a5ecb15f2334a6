//! JSON response bodies written as they are sent: the value is serialised on a blocking
//! thread into chunks of [`CHUNK`] bytes, at most [`IN_FLIGHT`] of them waiting for the
//! client, so answering with a large configuration or list never holds its whole text
//! (nor a `serde_json::Value` tree of it) in memory. A client that goes away stops the
//! serialiser at its next chunk.

use bytes::Bytes;
use http_body::Frame;
use serde::Serialize;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Bytes per chunk sent.
pub const CHUNK: usize = 16 * 1024;
/// Chunks written ahead of the client.
pub const IN_FLIGHT: usize = 4;

/// The error a body ends with when its value could not be serialised.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that yields the chunks the serialiser sends, then its error if it failed.
pub struct Chunks {
    rx: mpsc::Receiver<Result<Bytes, String>>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Chunks as data frames; the serialiser's error, if any, ends the body.
        let next = self.get_mut().rx.poll_recv(cx);
        next.map(|chunk| chunk.map(|r| r.map(Frame::data).map_err(BoxError::from)))
    }
}

/// Collects written bytes and hands them on [`CHUNK`] at a time.
struct Sender {
    tx: mpsc::Sender<Result<Bytes, String>>,
    buf: Vec<u8>,
}

impl Sender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for Sender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The value `make` returns as pretty-printed JSON (plus a final newline), produced while
/// it is sent. `make` runs on the serialising thread, so what it gathers is dropped as
/// soon as the body is written. Must be called inside a Tokio runtime.
pub fn pretty<T, F>(make: F) -> Chunks
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize,
{
    stream(make, true)
}

/// As [`pretty`], without indentation.
pub fn compact<T, F>(make: F) -> Chunks
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize,
{
    stream(make, false)
}

fn stream<T, F>(make: F, pretty: bool) -> Chunks
where
    F: FnOnce() -> T + Send + 'static,
    T: Serialize,
{
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut out = Sender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let value = make();
        let written = if pretty {
            serde_json::to_writer_pretty(&mut out, &value)
        } else {
            serde_json::to_writer(&mut out, &value)
        };
        let written = written
            .map_err(|e| e.to_string())
            .and_then(|()| out.write_all(b"\n").map_err(|e| e.to_string()))
            .and_then(|()| out.send().map_err(|e| e.to_string()));
        if let Err(e) = written {
            // The client is told the body is incomplete (the connection ends abruptly)
            // rather than handed truncated JSON as if whole.
            let _ = out
                .tx
                .blocking_send(Err(format!("cannot serialise the response: {e}")));
        }
    });
    Chunks { rx }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[derive(Serialize)]
    struct Item {
        name: String,
        n: usize,
    }

    #[tokio::test]
    async fn a_large_value_arrives_whole_in_bounded_chunks() {
        let body = pretty(|| {
            (0..20_000)
                .map(|n| Item {
                    name: format!("service-{n}"),
                    n,
                })
                .collect::<Vec<_>>()
        });
        let mut body = std::pin::pin!(body);
        let mut text = Vec::new();
        let mut chunks = 0;
        while let Some(frame) = body.as_mut().frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() < CHUNK + 4096, "a chunk of {} bytes", data.len());
            text.extend_from_slice(&data);
            chunks += 1;
        }
        assert!(chunks > 10, "{chunks} chunks");
        let parsed: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 20_000);
        assert_eq!(parsed[19_999]["name"], "service-19999");
        assert!(text.ends_with(b"]\n"));
    }

    #[tokio::test]
    async fn a_value_that_cannot_be_serialised_ends_the_body_with_an_error() {
        // A map with non-string keys is not JSON.
        let body = pretty(|| std::collections::BTreeMap::from([((1, 2), "x")]));
        let err = body
            .collect()
            .await
            .expect_err("an error, not truncated JSON");
        assert!(err.to_string().contains("cannot serialise"), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_stops_the_serialiser() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        struct Endless(std::sync::mpsc::Sender<()>);
        impl Serialize for Endless {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(None)?;
                // Without end, unless writing fails.
                let mut n = 0u64;
                loop {
                    seq.serialize_element(&n)?;
                    n += 1;
                }
            }
        }
        impl Drop for Endless {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let body = pretty(move || Endless(done_tx));
        drop(body);
        // The serialiser fails at its next chunk and drops the value (else it would write
        // for ever and the wait below fail).
        tokio::task::spawn_blocking(move || {
            done_rx.recv_timeout(std::time::Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("the serialiser stopped");
    }
}
