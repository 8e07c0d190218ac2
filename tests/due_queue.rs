//! The worker behind the due queues (pings, expiry, lifecycle events) over real sockets: a
//! backlog larger than one claim goes out claim after claim at once, not one claim per tick,
//! on the embedded store and on a real redis-server.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use dtr_proxy::app::{compose, connect_store, upstream, Services};
use dtr_proxy::clock::now_ms;
use dtr_proxy::crypto::random_token;
use dtr_proxy::endpoints::ping;
use dtr_proxy::metrics::Metrics;
use dtr_proxy::records::{AuthMethod, ClientBinding, HeldSecrets, ProcessRecord, Sealed, Status};
use dtr_proxy::telemetry::Telemetry;
use dtr_proxy::upstream::{BufferedReply, OpClient, UpstreamError};
use dtr_proxy::Config;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use serde_json::json;

/// Several claims' worth (a claim takes 32).
const BACKLOG: usize = 150;
/// The worker's tick: one claim per tick would take about 4 ticks more for the backlog.
const TICK: Duration = Duration::from_millis(500);

/// No OP call is made here (no operator account, so expiry revokes nothing).
struct NoOp;

impl OpClient for NoOp {
    fn post_form<'a>(
        &'a self,
        _: &'a str,
        _: String,
        _: &'a HeaderMap,
        _: IpAddr,
        _: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Connect("no OP here".into())) })
    }

    fn get<'a>(
        &'a self,
        _: &'a str,
        _: &'a HeaderMap,
        _: IpAddr,
        _: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Connect("no OP here".into())) })
    }

    fn send_own<'a>(
        &'a self,
        _: http::Method,
        _: &'a str,
        _: HeaderMap,
        _: bytes::Bytes,
        _: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Connect("no OP here".into())) })
    }
}

fn services(store: StoreKind, pings: &str, events: &str) -> Services {
    let mut env: Vec<(String, String)> = vec![
        ("DTR_UPSTREAM_URL".into(), "http://127.0.0.1:9".into()),
        ("DTR_PUBLIC_URL".into(), "https://id.example.com".into()),
        ("DTR_ALLOW_INSECURE_HTTP".into(), "true".into()),
        ("DTR_HASH_KEY".into(), STANDARD.encode([7u8; 32])),
        ("DTR_TOKEN_KEYS".into(), format!("k1:{}", STANDARD.encode([9u8; 32]))),
        (
            "DTR_CLIENTS".into(),
            json!([{"client_id": "rp", "notification_endpoint": pings}]).to_string(),
        ),
        ("DTR_EVENTS_URL".into(), events.into()),
        (
            "DTR_EVENTS_SECRET".into(),
            "whsec_ZXZlbnRzLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm".into(),
        ),
    ];
    if store == StoreKind::Redis {
        env.push(("DTR_REDIS_URL".into(), redis().url.clone()));
        env.push(("DTR_REDIS_KEY_PREFIX".into(), unique("dq")));
    }
    let config = Config::from_env(env).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new();
    let store = connect_store(&config, None).expect("store");
    compose(
        &config,
        store,
        upstream(&config, &metrics, Telemetry::off()),
        Arc::new(NoOp),
        metrics,
        Telemetry::off(),
    )
}

fn record(status: Status, expires_at: u64, sealed: Sealed) -> ProcessRecord {
    let now = now_ms();
    ProcessRecord {
        process_id: random_token(16),
        realm: "acme".into(),
        client_id: "rp".into(),
        client: ClientBinding {
            method: AuthMethod::ClientSecretBasic,
            fingerprint: None,
        },
        jkt: None,
        x5t: None,
        status,
        description: None,
        interaction: None,
        interval: 5,
        strikes: 0,
        last_strike: None,
        created_at: now - 60_000,
        expires_at,
        completed_at: (status == Status::Approved).then_some(now),
        delivering_since: None,
        sub: Some(unique("user")),
        sid: None,
        nonce: None,
        requested: Default::default(),
        ping_attempts: 0,
        release_in_doubt: false,
        trace: None,
        sealed,
    }
}

async fn backlog_goes_out_at_once(store: StoreKind) {
    let pings = ping_receiver(vec![]).await;
    let events = ping_receiver(vec![]).await;
    let services = services(store, &pings.url, &events.url);
    let records = services.pinger.records.clone();

    // Approved processes with their pings due now, and pending ones expiring now.
    let mut ids = HashSet::new();
    for _ in 0..BACKLOG {
        let id = random_token(32);
        let hash = records.process_hash(&id);
        let secrets = HeldSecrets {
            deferred_auth_id: id.clone(),
            refresh_token: random_token(32),
            notification_token: None,
        };
        let approved = record(Status::Approved, now_ms() + 60_000, records.seal(&secrets, &hash));
        records.create(&hash, &approved).await.expect("create");
        records.schedule_ping(&hash, now_ms()).await.expect("schedule");
        ids.insert(id);
    }
    let mut expiring = HashSet::new();
    for _ in 0..BACKLOG {
        let id = random_token(32);
        let hash = records.process_hash(&id);
        let pending = record(Status::Pending, now_ms() + 200, Sealed::default());
        records.create(&hash, &pending).await.expect("create");
        expiring.insert(pending.process_id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (stop, watcher) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(ping::run(services.pinger.clone(), watcher));
    assert!(
        pings.wait_for(BACKLOG, Duration::from_secs(15)).await,
        "got {} pings",
        pings.count()
    );
    let pinged = started.elapsed();
    assert!(
        events.wait_for(BACKLOG, Duration::from_secs(15)).await,
        "got {} events",
        events.count()
    );
    let announced = started.elapsed();
    stop.send(true).expect("stop");
    worker.await.expect("worker");

    let received: Vec<String> = pings
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body["deferred_auth_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(received.len(), BACKLOG, "each ping once");
    assert_eq!(received.into_iter().collect::<HashSet<_>>(), ids);
    let expired: Vec<String> = events
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            assert_eq!(body["type"], "deferred.expired");
            body["data"]["process_id"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(expired.len(), BACKLOG, "each expiry announced once");
    assert_eq!(expired.into_iter().collect::<HashSet<_>>(), expiring);
    // The first tick comes after TICK; one claim per tick would need four more.
    assert!(
        pinged < TICK * 3,
        "{BACKLOG} due pings took {pinged:?}: one claim per tick?"
    );
    assert!(
        announced < TICK * 3,
        "{BACKLOG} expiries and their events took {announced:?}: one claim per tick?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_at_once_on_the_embedded_store() {
    backlog_goes_out_at_once(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_goes_out_at_once_on_redis() {
    backlog_goes_out_at_once(StoreKind::Redis).await;
}
