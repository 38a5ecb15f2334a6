//! Calling a Canary's webhooks: `POST url` with a JSON body (Flagger's payload: `name`,
//! `namespace`, `phase`, `type`, `canaryWeight`, `metadata`), HTTP/1.1 over plain TCP, the
//! whole call bounded by the webhook's `timeout`. A 2xx answer is a pass; anything else,
//! a refused connection or no answer in time is not, and the answer says which.

use super::plan::HookAnswer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use skein_model::resource::{webhook_addr, Webhook};

/// What a webhook is told.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    /// The Canary's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its phase now.
    pub phase: skein_model::resource::CanaryPhase,
    /// The webhook's type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The canary's weight now.
    pub canary_weight: u32,
    /// The webhook's `metadata`.
    pub metadata: &'a std::collections::BTreeMap<String, String>,
}

/// Calls `hook` with `payload`; never takes longer than its timeout.
pub async fn call(hook: &Webhook, payload: &Payload<'_>) -> HookAnswer {
    let answer = |ok: bool, detail: String| HookAnswer {
        name: hook.name.clone(),
        kind: hook.kind,
        ok,
        detail,
    };
    let timeout = hook.timeout;
    match tokio::time::timeout(timeout, send(hook, payload)).await {
        Err(_) => answer(
            false,
            format!(
                "gave no answer within its timeout {}",
                skein_model::duration::format(timeout)
            ),
        ),
        Ok(Err(e)) => answer(false, format!("could not be called: {e}")),
        Ok(Ok(status)) if (200..300).contains(&status) => {
            answer(true, format!("answered {status}"))
        }
        Ok(Ok(status)) => answer(false, format!("answered {status}")),
    }
}

async fn send(hook: &Webhook, payload: &Payload<'_>) -> Result<u16, String> {
    let (addr, path) = webhook_addr(&hook.url).ok_or("its url is not http://host:port/path")?;
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "skein-canary")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    let status = resp.status().as_u16();
    // Read (and drop) at most a little of the body, so the server is not cut off mid-write.
    let _ = http_body_util::Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await;
    Ok(status)
}
