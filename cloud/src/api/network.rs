//! `POST /v1/network-keys`: a connector asks for the public keys of its network's machines, so it
//! can check each hub batch before it acknowledges it. The answer is a `Signed<NetworkKeys>` by the
//! cloud key, which the connector pinned at enrollment; it also carries the ingest limits, so the
//! connector refuses what the cloud would refuse and sizes its forwards below what it takes.
//! A POST (signed like every machine request, over an empty or any small body) rather than a GET,
//! so the signature covers a body and the connector's request is authenticated the usual way.

use super::auth::connector_machine;
use super::{internal, AppState};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use outpost_shared::keys::{IngestLimits, MachineId, NetworkKeys, NetworkMachine, Signed};

pub(super) async fn keys(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signer = match connector_machine(&st, &headers, "POST", "/v1/network-keys", &body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let answer = signed_keys(&st, signer.key.clone()).await;
    signer.seal(answer).await
}

async fn signed_keys(st: &AppState, connector: crate::trust::MachineKey) -> Response {
    let listed = match st.trust.network_keys(&connector.network_id).await {
        Ok(l) => l,
        Err(e) => return internal(e),
    };
    let machines = listed
        .into_iter()
        .filter_map(|k| {
            Some(NetworkMachine {
                machine_id: MachineId::parse(&k.machine_id).ok()?,
                public_key: k.public_key,
            })
        })
        .collect();
    let Ok(connector_id) = MachineId::parse(&connector.machine_id) else {
        return internal(format!("enrolled connector with a malformed id {}", connector.machine_id));
    };
    let doc = NetworkKeys {
        connector: connector_id,
        network_id: connector.network_id,
        issued_at: Utc::now(),
        machines,
        limits: IngestLimits {
            max_body: st.config.ingest.max_body,
            max_decompressed: st.config.ingest.max_decompressed,
            max_readings: st.config.ingest.max_readings as u64,
        },
    };
    let key = st.trust.clone();
    // RSA signing is CPU work: off the async workers.
    match tokio::task::spawn_blocking(move || Signed::sign(key.key(), &doc)).await {
        Ok(Ok(signed)) => Json(signed).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
