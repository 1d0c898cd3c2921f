//! HTTP health endpoints on the client port (and the metrics port), with etcd's semantics.
//!
//! - `GET /health`: `{"health":"true"}` when no alarm is raised (`?exclude=NOSPACE` ignores
//!   one), a leader is known, and a read succeeds: linearizable by default (etcd's QGET through
//!   Raft), local with `?serializable=true`. Otherwise 503 with `{"health":"false","reason":...}`
//!   (`ALARM NOSPACE`, `RAFT NO LEADER`, `QGET ERROR: ...`), as etcd 3.5 answers.
//! - `GET /livez` (etcd 3.6): the process serves local reads. `GET /readyz`: no CORRUPT alarm,
//!   and local and linearizable reads succeed. Both answer `ok`, or 503 with
//!   `[-]CHECK failed: REASON` lines; `?verbose` lists every check, `?exclude=CHECK` skips one.

use std::sync::Arc;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use concord_proto::etcdserverpb::RangeRequest;

use super::Api;

/// The `/health`, `/livez` and `/readyz` routes.
pub fn router(api: Arc<Api>) -> Router {
    let (live, ready) = (api.clone(), api.clone());
    Router::new()
        .route(
            "/health",
            get(move |RawQuery(query): RawQuery| {
                let api = api.clone();
                async move { health(&api, &Query::parse(query.as_deref())).await }
            }),
        )
        .route(
            "/livez",
            get(move |RawQuery(query): RawQuery| {
                let api = live.clone();
                async move { probe(&api, "livez", LIVEZ, &Query::parse(query.as_deref())).await }
            }),
        )
        .route(
            "/readyz",
            get(move |RawQuery(query): RawQuery| {
                let api = ready.clone();
                async move { probe(&api, "readyz", READYZ, &Query::parse(query.as_deref())).await }
            }),
        )
}

/// The query parameters the health endpoints take.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    exclude: Vec<String>,
    serializable: bool,
    verbose: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query::default();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "exclude" => parsed.exclude.push(value.to_string()),
                "serializable" => parsed.serializable = value == "true",
                "verbose" => parsed.verbose = true,
                _ => {}
            }
        }
        parsed
    }
}

/// A read of the local store, as etcd's serializable QGET.
fn local_read(api: &Api) -> Result<(), String> {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    api.store().range(&probe).map(drop).map_err(|e| e.to_string())
}

/// How long a health check waits for a linearizable read (a member without quorum would
/// otherwise keep the prober waiting for the whole request timeout).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn bounded_linearizable_read(api: &Api) -> Result<(), String> {
    match tokio::time::timeout(READ_TIMEOUT, api.linearizable_read()).await {
        Ok(read) => read.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no linearizable read within {READ_TIMEOUT:?}")),
    }
}

async fn health(api: &Api, query: &Query) -> impl IntoResponse + use<> {
    let verdict = async {
        if let Some(alarm) = api
            .node()
            .alarms
            .names()
            .into_iter()
            .find(|name| !query.exclude.iter().any(|e| e == name))
        {
            return Err(format!("ALARM {alarm}"));
        }
        if api.node().leader().is_none() {
            return Err("RAFT NO LEADER".to_string());
        }
        let read = if query.serializable {
            local_read(api)
        } else {
            bounded_linearizable_read(api).await
        };
        read.map_err(|e| format!("QGET ERROR: {e}"))
    };
    let (status, body) = match verdict.await {
        Ok(()) => (StatusCode::OK, r#"{"health":"true"}"#.to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}).to_string(),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// A named check of `/livez` or `/readyz`.
#[derive(Debug, Clone, Copy)]
enum Check {
    SerializableRead,
    LinearizableRead,
    DataCorruption,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::DataCorruption => "data_corruption",
        }
    }

    async fn run(self, api: &Api) -> Result<(), String> {
        match self {
            Check::SerializableRead => local_read(api),
            Check::LinearizableRead => bounded_linearizable_read(api).await,
            Check::DataCorruption if api.node().alarms.corrupt() => Err("the CORRUPT alarm is raised".into()),
            Check::DataCorruption => Ok(()),
        }
    }
}

async fn probe(api: &Api, endpoint: &str, checks: &[Check], query: &Query) -> impl IntoResponse + use<> {
    let mut lines = Vec::new();
    let mut failed = false;
    for check in checks {
        let name = check.name();
        if query.exclude.iter().any(|e| e == name) {
            lines.push(format!("[+]{name} excluded: ok"));
            continue;
        }
        match check.run(api).await {
            Ok(()) => lines.push(format!("[+]{name} ok")),
            Err(reason) => {
                failed = true;
                lines.push(format!("[-]{name} failed: {reason}"));
            }
        }
    }
    let (status, verdict) = if failed {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{endpoint} check failed"),
        )
    } else {
        (StatusCode::OK, "ok".to_string())
    };
    let body = if failed || query.verbose {
        lines.retain(|line| query.verbose || line.starts_with("[-]"));
        format!("{}\n{verdict}\n", lines.join("\n"))
    } else {
        format!("{verdict}\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_as_etcds() {
        let query = Query::parse(Some("exclude=NOSPACE&serializable=true&exclude=CORRUPT&verbose"));
        assert_eq!(
            query,
            Query {
                exclude: vec!["NOSPACE".into(), "CORRUPT".into()],
                serializable: true,
                verbose: true,
            }
        );
        assert_eq!(Query::parse(None), Query::default());
        assert!(!Query::parse(Some("serializable=false")).serializable);
    }
}
