//! Health probes: `GET /healthz` (the process answers) and `GET /readyz` (the store and the hub
//! answer), cheap enough to poll every second.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::AppState;
use crate::Result;

/// How long a readiness check may take before its backend counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 `{"status":"ok"}` whenever the process answers.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store and the hub answer, else 503; the body names each
/// backend, whether it is up and, when down, the error's code (the full error goes to the log,
/// not to an unauthenticated probe).
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let service = &state.service;
    let (store, hub) = tokio::join!(
        check("store", service.store().ping()),
        check("hub", service.hub().ping())
    );
    let report = |backend: &str, down: Option<&str>| match down {
        None => json!({"backend": backend, "up": true}),
        Some(code) => json!({"backend": backend, "up": false, "error": code}),
    };
    let ready = store.is_none() && hub.is_none();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "store": report(service.store().backend(), store),
        "hub": report(service.hub().backend(), hub),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `None` when the check answered in time, else the code of what went wrong.
async fn check(what: &str, ping: impl Future<Output = Result<()>>) -> Option<&'static str> {
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(what, error = %e, "readiness check failed");
            Some(e.code())
        }
        Err(_) => {
            tracing::warn!(what, timeout = ?CHECK_TIMEOUT, "readiness check timed out");
            Some("timeout")
        }
    }
}
