//! Redis as operators run it, with real redis-server processes the tests start and kill: a
//! master that moves behind its address, Sentinel with authentication, a Cluster with
//! replicas. The store contract holds on each, and the deferred flow survives a failover (and
//! on Cluster a slot migration) in the middle of a process.

mod common;

use std::time::{Duration, Instant};

use common::faults::*;
use common::*;
use dtr_proxy::store::{contract, RedisOptions, RedisStore, Store, Topology};
use serde_json::json;

fn store(topology: Topology, prefix: &str) -> Store {
    Store::Redis(RedisStore::connect(&RedisOptions::new(topology, prefix, Duration::from_secs(2))).expect("store"))
}

/// Polls until an answer other than "wait" comes (the tokens or a refusal), tolerating the
/// 503s of a failover; at most `within`. Waits as a client is told to: the `Retry-After` of a
/// 503, the interval a `slow_down` names, else the interval. (A poll answered 503 may still
/// have moved the poll clock, as the store command that stamps it can succeed while the read
/// fails.)
async fn poll_until_answered(proxy: &Proxy, id: &str, within: Duration) -> Reply {
    let deadline = Instant::now() + within;
    let mut interval = Duration::from_millis(1500);
    loop {
        let reply = proxy.poll(&dtr_client(), id).await;
        let wait = match (reply.status, reply.error()) {
            (503, _) => {
                let seconds = reply
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                Duration::from_secs(seconds.unwrap_or(2))
            }
            (_, "slow_down") => {
                let description = reply.json["error_description"].as_str().unwrap_or_default();
                let named = description
                    .split("at least ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next()?.parse().ok());
                interval = named.map_or(interval + Duration::from_secs(5), |seconds| {
                    Duration::from_secs(seconds) + Duration::from_millis(300)
                });
                interval
            }
            (_, "authorization_pending") => interval,
            _ => return reply,
        };
        if Instant::now() + wait > deadline {
            return reply;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Sends the completion, retrying the 503s of a failover; at most 20 s.
async fn complete(proxy: &Proxy, user: &str) {
    for _ in 0..40 {
        let reply = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
        if reply.status == 200 {
            return;
        }
        assert_eq!(reply.status, 503, "{}", reply.json);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("completion never accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_master_that_moves_behind_its_address() {
    // A Kubernetes Service in front of Redis: after a failover its endpoints move to the
    // promoted pod, but established connections stay on the demoted one.
    let old = RedisServer::start(&[]);
    let port = old.port.to_string();
    let new = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    assert!(wait_until(Duration::from_secs(10), || new
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")));
    let service = FaultRelay::start(old.port).await;
    let store = store(
        Topology::Standalone {
            url: format!("redis://127.0.0.1:{}", service.port),
        },
        &unique("ha"),
    );
    let key = store.key("moved");
    store.put(&key, b"before", Duration::from_secs(60)).await.unwrap();
    wait_replicated(|| old.cli(&["INFO", "replication"]));

    // Promote the replica, demote the master; the Service still points at the old one.
    assert_eq!(new.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    let new_port = new.port.to_string();
    assert_eq!(old.cli(&["REPLICAOF", "127.0.0.1", &new_port]), "OK");
    let refused = store.put(&key, b"lost?", Duration::from_secs(60)).await;
    assert!(refused.is_err(), "a write to the demoted master cannot succeed");

    // The Service moves. Within the reconnect backoff (at most a second) writes reach the
    // new master, although the demoted master keeps the old connection open: the READONLY
    // connection was dropped, not kept until a socket breaks.
    service.point_to(new.port);
    let started = Instant::now();
    let mut written = store.put(&key, b"after", Duration::from_secs(60)).await;
    while written.is_err() && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        written = store.put(&key, b"after", Duration::from_secs(60)).await;
    }
    written.expect("write after the move");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(new.cli(&["GET", &key]), "after");
    contract::exercise(&store, "moved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_authentication_keeps_the_contract_across_a_failover() {
    let mut bed = SentinelBed::start(true);
    let mut options = RedisOptions::new(
        Topology::from_url(&bed.url(), false).expect("sentinel url"),
        &unique("s"),
        Duration::from_secs(2),
    );
    options.sentinel_password = Some("sentinel-secret".into());
    let store = Store::Redis(RedisStore::connect(&options).expect("store"));
    contract::exercise(&store, "before").await;
    let key = store.key("kept");
    store.put(&key, b"v", Duration::from_secs(60)).await.unwrap();

    let started = Instant::now();
    let new_master = bed.kill_master_and_fail_over();
    let failover = started.elapsed();
    // The first command after the failover may still meet the dead master's socket; within
    // the store timeout the store asks Sentinel again.
    let mut value = store.get(&key).await;
    for _ in 0..10 {
        if value.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        value = store.get(&key).await;
    }
    assert_eq!(value.expect("read after failover").as_deref(), Some(&b"v"[..]));
    store
        .put(&key, b"w", Duration::from_secs(60))
        .await
        .expect("write after failover");
    assert_eq!(bed.node_cli(new_master, &["GET", &key]), "w");
    contract::exercise(&store, "after").await;
    eprintln!("sentinel failover took {failover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_flow_survives_a_sentinel_failover_mid_process() {
    let mut bed = SentinelBed::start(false);
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", bed.url())
            .env("DTR_REDIS_KEY_PREFIX", unique("sf")),
    )
    .await;
    let ready: serde_json::Value = proxy
        .http
        .get(format!("{}/readyz", proxy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["store"], "up", "{ready}");
    assert_eq!(ready["store_kind"], "redis-sentinel", "{ready}");
    let user = unique("sam");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;

    bed.kill_master_and_fail_over();
    complete(&proxy, &user).await;
    let tokens = poll_until_answered(&proxy, &id, Duration::from_secs(20)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert!(tokens.json["access_token"].is_string());
    // A spent id is the draft's last check, after the polling rate: wait the interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spent = proxy.poll(&dtr_client(), &id).await;
    assert_eq!((spent.status, spent.error()), (400, "invalid_grant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_the_contract_and_the_flow_through_migration_and_failovers() {
    let mut bed = ClusterBed::start(3);
    let prefix = unique("c");
    let cluster = store(Topology::Cluster { url: bed.seed_url() }, &prefix);
    contract::exercise(&cluster, "contract").await;

    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", bed.seed_url())
            .env("DTR_REDIS_CLUSTER", "true")
            .env("DTR_REDIS_KEY_PREFIX", prefix.clone()),
    )
    .await;
    let user = unique("cleo");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    // Every key of the process shares one hash tag, so one slot.
    let keys: Vec<String> = bed.keys(&prefix).into_iter().filter(|k| k.contains("{p:")).collect();
    assert!(!keys.is_empty(), "no process keys under {prefix}");
    let slot = bed.slot_of(&keys[0]);
    assert!(keys.iter().all(|k| bed.slot_of(k) == slot), "{keys:?}");

    // The slot moves while the process is pending. While its keys are split between two
    // masters a multi-key command is refused (TRYAGAIN): the poll may be a 503 with
    // Retry-After, never a wrong answer. Once every key has moved but the slot is still
    // migrating, commands follow ASK redirections.
    let sides = bed.begin_migration(slot);
    bed.move_keys(slot, sides, Some(1));
    wait_interval(1).await;
    let split = proxy.poll(&dtr_client(), &id).await;
    assert!(
        split.error() == "authorization_pending" || (split.status == 503 && split.headers.contains_key("retry-after")),
        "{} {}",
        split.status,
        split.json
    );
    bed.move_keys(slot, sides, None);
    wait_interval(1).await;
    let pending = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    complete(&proxy, &user).await;
    bed.finish_migration(slot, sides);
    assert_eq!(bed.owner(slot), sides.1);

    // A coordinated failover of the slot's master, then the release.
    bed.fail_over(slot);
    let tokens = poll_until_answered(&proxy, &id, Duration::from_secs(20)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);

    // An unplanned one: the master is killed (after its replica caught up); the replica takes
    // over and the spent process stays spent.
    let owner = bed.owner(slot);
    wait_replicated(|| cli(owner, &["INFO", "replication"]));
    let index = bed.nodes.iter().position(|n| n.port == owner).expect("node");
    bed.nodes[index].kill();
    assert!(
        wait_until(Duration::from_secs(40), || ![0, owner].contains(&bed.owner(slot))),
        "no automatic failover"
    );
    bed.wait_ok();
    let spent = poll_until_answered(&proxy, &id, Duration::from_secs(60)).await;
    assert_eq!((spent.status, spent.error()), (400, "invalid_grant"), "{}", spent.json);
    contract::exercise(&cluster, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_and_to_sentinel_with_an_internal_ca() {
    let tls = TlsFiles::generate();
    let ca = std::fs::read(tls.ca()).expect("ca");
    let master = RedisServer::start_tls(&tls);
    let url = format!("rediss://127.0.0.1:{}", master.port);

    // Without the CA the server's certificate is not trusted.
    let untrusted = store(Topology::from_url(&url, false).unwrap(), &unique("tls"));
    assert!(
        untrusted.ping().await.is_err(),
        "a certificate of an unknown CA was accepted"
    );

    let mut options = RedisOptions::new(
        Topology::from_url(&url, false).unwrap(),
        &unique("tls"),
        Duration::from_secs(2),
    );
    options.ca_pem = Some(ca.clone());
    let direct = Store::Redis(RedisStore::connect(&options).expect("store"));
    contract::exercise(&direct, "tls").await;

    // Through a Sentinel that speaks TLS to its clients and to the master.
    let sentinel = RedisServer::sentinel_tls("tls-master", master.port, &tls);
    let url = format!("rediss+sentinel://127.0.0.1:{}/tls-master", sentinel.port);
    let mut options = RedisOptions::new(
        Topology::from_url(&url, false).unwrap(),
        &unique("tls"),
        Duration::from_secs(2),
    );
    options.ca_pem = Some(ca);
    let through_sentinel = Store::Redis(RedisStore::connect(&options).expect("store"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ping = through_sentinel.ping().await;
    while ping.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ping = through_sentinel.ping().await;
    }
    ping.expect("the master through a TLS Sentinel");
    contract::exercise(&through_sentinel, "tls-sentinel").await;
}
