//! The operator API on the admin port over real sockets, in front of the real OP, on the
//! embedded store and on a real redis-server: authentication, listing and searching with
//! pages, inspection, and what cancel, deny and extend do to the RP's side of the flow.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

macro_rules! on_both_stores {
    ($($name:ident => $body:expr;)*) => {
        mod embedded {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { ($body)(StoreKind::Embedded).await }
            )*
        }
        mod redis {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { ($body)(StoreKind::Redis).await }
            )*
        }
    };
}

on_both_stores! {
    requests_without_a_valid_token_are_refused => authentication;
    processes_are_listed_filtered_and_paged => listing;
    a_process_is_inspected_without_its_secrets => inspection;
    a_cancelled_process_answers_the_rps_poll_with_access_denied => cancel;
    a_denial_pings_the_rp_and_reaches_its_poll => deny;
    an_extended_process_outlives_its_first_expiry => extend;
}

/// The process of `user`, found through the API by subject.
async fn process_of(proxy: &Proxy, user: &str) -> Value {
    let found = proxy
        .operator(Method::GET, &format!("/processes?sub={user}"), None)
        .await;
    assert_eq!(found.status, 200, "{}", found.json);
    let processes = found.json["processes"].as_array().expect("processes");
    assert_eq!(processes.len(), 1, "{}", found.json);
    processes[0].clone()
}

async fn authentication(store: StoreKind) {
    let second = "second-token-0123456789abcdefghijklmnopqrstuvw";
    let proxy = start(Options::new(store).env("DTR_OPERATOR_TOKEN", format!("{OPERATOR_TOKEN},{second}"))).await;
    let url = format!("{}/operator/v1/processes", proxy.admin);

    let anonymous = proxy.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        r#"Bearer realm="dtr-operator""#
    );
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    for wrong in [
        "operator-token-0123456789abcdefghijklmnopqrstuvwxyZ",
        "short",
        &OPERATOR_TOKEN[..OPERATOR_TOKEN.len() - 1],
    ] {
        let refused = proxy.http.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{wrong}");
        assert_eq!(
            refused.headers()["www-authenticate"],
            r#"Bearer realm="dtr-operator", error="invalid_token""#
        );
    }
    let basic = proxy
        .http
        .get(&url)
        .basic_auth("operator", Some(OPERATOR_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "only a bearer token counts");
    // Mutations are refused the same way, before anything is looked up.
    let cancel = proxy
        .http
        .post(format!("{url}/someid/cancel"))
        .bearer_auth("nope-nope-nope-nope-nope-nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 401);

    // Both configured tokens work (one being rotated in, one out).
    for token in [OPERATOR_TOKEN, second] {
        let ok = proxy.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    // The old unauthenticated process view is gone.
    let old = proxy
        .http
        .get(format!("{}/v1/processes/x", proxy.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"dtr_requests_total{route="operator",outcome="unauthorized"} 6"#),
        "{metrics}"
    );

    // Without a token the API does not exist, whatever is presented.
    let off = start(Options::new(store).env("DTR_OPERATOR_TOKEN", "")).await;
    for path in ["/operator/v1/processes", "/operator/v1/openapi.json"] {
        let absent = off
            .http
            .get(format!("{}{path}", off.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(absent.status(), 404, "{path}");
    }
}

async fn listing(store: StoreKind) {
    let proxy = start(Options::new(store)).await;
    let empty = proxy.operator(Method::GET, "/processes", None).await;
    assert_eq!(empty.status, 200, "{}", empty.json);
    assert_eq!(empty.json, json!({"processes": [], "next_cursor": null}));

    let users: Vec<String> = (0..5).map(|i| unique(&format!("lister{i}-"))).collect();
    for user in &users[..4] {
        proxy.start_process(&dtr_client(), user, None).await;
    }
    let post = Auth::Post("dtr-post", "dtr-post-secret");
    proxy.start_process(&post, &users[4], None).await;

    // Pages of two: every process once, in expiry order, then no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("/processes?limit=2&cursor={c}"),
            None => "/processes?limit=2".to_owned(),
        };
        let page = proxy.operator(Method::GET, &query, None).await;
        assert_eq!(page.status, 200, "{}", page.json);
        let processes = page.json["processes"].as_array().unwrap();
        assert!(processes.len() <= 2);
        seen.extend(processes.iter().cloned());
        pages += 1;
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the cursor does not advance");
    }
    assert_eq!(pages, 3);
    let subjects: BTreeSet<&str> = seen.iter().map(|p| p["sub"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = users.iter().map(String::as_str).collect();
    assert_eq!(subjects, expected, "each process exactly once");
    assert_eq!(seen.len(), 5);
    let expiries: Vec<u64> = seen.iter().map(|p| p["expires_at"].as_u64().unwrap()).collect();
    assert!(expiries.windows(2).all(|w| w[0] <= w[1]), "{expiries:?}");

    // Filters.
    let by_client = proxy.operator(Method::GET, "/processes?client_id=dtr-post", None).await;
    let listed = by_client.json["processes"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{}", by_client.json);
    assert_eq!(listed[0]["sub"], users[4].as_str());
    let realm = proxy
        .operator(
            Method::GET,
            &format!("/processes?realm={}&client_id=dtr-client", proxy.realm),
            None,
        )
        .await;
    assert_eq!(realm.json["processes"].as_array().unwrap().len(), 4);
    let other_realm = proxy.operator(Method::GET, "/processes?realm=elsewhere", None).await;
    assert_eq!(other_realm.json["processes"], json!([]));
    assert_eq!(process_of(&proxy, &users[2]).await["client_id"], "dtr-client");

    let denied = proxy
        .complete(&json!({"outcome": "denied", "sub": users[1], "error_description": "No match"}))
        .await;
    assert_eq!(denied.status, 200, "{}", denied.json);
    let by_status = proxy.operator(Method::GET, "/processes?status=denied", None).await;
    let listed = by_status.json["processes"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{}", by_status.json);
    assert_eq!(listed[0]["sub"], users[1].as_str());
    assert_eq!(listed[0]["description"], "No match");
    let pending = proxy
        .operator(Method::GET, "/processes?status=pending&limit=100", None)
        .await;
    assert_eq!(pending.json["processes"].as_array().unwrap().len(), 4);

    // Bad queries are 400, never a 500.
    for bad in [
        "/processes?limit=0",
        "/processes?limit=101",
        "/processes?limit=ten",
        "/processes?status=open",
        "/processes?cursor=not-a-cursor",
        "/processes?sort=asc",
        "/processes?sub=a&sub=b",
    ] {
        let refused = proxy.operator(Method::GET, bad, None).await;
        assert_eq!((refused.status, refused.error()), (400, "invalid_request"), "{bad}");
    }
}

async fn inspection(store: StoreKind) {
    let proxy = start(Options::new(store)).await;
    let user = unique("inspected");
    let (deferred_auth_id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let listed = process_of(&proxy, &user).await;
    let process_id = listed["process_id"].as_str().unwrap();

    let shown = proxy
        .operator(Method::GET, &format!("/processes/{process_id}"), None)
        .await;
    assert_eq!(shown.status, 200, "{}", shown.json);
    assert_eq!(shown.json, listed);
    assert_eq!(shown.json["status"], "pending");
    assert_eq!(shown.json["realm"], proxy.realm.as_str());
    assert_eq!(shown.json["client_id"], "dtr-client");
    assert_eq!(shown.json["client_auth_method"], "client_secret_basic");
    assert_eq!(shown.headers["cache-control"], "no-store");
    let text = shown.json.to_string();
    assert!(!text.contains(&deferred_auth_id), "the deferred_auth_id never shows");
    for field in ["deferred_auth_id", "refresh_token", "sealed", "sid", "jkt", "nonce"] {
        assert!(shown.json.get(field).is_none(), "{field} in {text}");
    }

    for unknown in [
        "/processes/AAAAAAAAAAAAAAAAAAAAAA",
        "/processes/has%20space",
        "/nothing",
    ] {
        let missing = proxy.operator(Method::GET, unknown, None).await;
        assert_eq!((missing.status, missing.error()), (404, "not_found"), "{unknown}");
    }
    let wrong_method = proxy
        .operator(Method::DELETE, &format!("/processes/{process_id}"), None)
        .await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.headers["allow"], "GET");

    // The document the API is described by is served with it.
    let document = proxy.operator(Method::GET, "/openapi.json", None).await;
    assert_eq!(document.status, 200);
    assert_eq!(document.json["openapi"], "3.1.0");
}

async fn cancel(store: StoreKind) {
    let receiver = ping_receiver(vec![]).await;
    let options = Options::new(store).client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options).await;
    let user = unique("cancelled");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let process_id = process_of(&proxy, &user).await["process_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let cancelled = proxy
        .operator(Method::POST, &format!("/processes/{process_id}/cancel"), None)
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    assert_eq!(cancelled.json["status"], "cancelled");
    assert!(cancelled.json["completed_at"].as_u64().is_some());

    let poll = proxy.poll(&dtr_client(), &id).await;
    assert_eq!((poll.status, poll.error()), (400, "access_denied"), "{}", poll.json);
    let again = proxy
        .operator(Method::POST, &format!("/processes/{process_id}/cancel"), None)
        .await;
    assert_eq!((again.status, again.error()), (409, "conflict"), "{}", again.json);
    assert_eq!(again.json["process"]["status"], "cancelled");
    let late = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(late.status, 404, "a cancelled process is closed: {}", late.json);

    // Off the active list, still found by subject.
    let active = proxy.operator(Method::GET, "/processes", None).await;
    assert_eq!(active.json["processes"], json!([]), "{}", active.json);
    assert_eq!(process_of(&proxy, &user).await["status"], "cancelled");
    let missing = proxy
        .operator(Method::POST, "/processes/AAAAAAAAAAAAAAAAAAAAAA/cancel", None)
        .await;
    assert_eq!(missing.status, 404);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count(), 0, "no ping for a cancelled process");
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"dtr_process_events_total{event="deferred.cancelled"} 1"#),
        "{metrics}"
    );
}

async fn deny(store: StoreKind) {
    let receiver = ping_receiver(vec![]).await;
    let options = Options::new(store).client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options).await;
    let user = unique("denied");
    let (id, _) = proxy.start_process(&dtr_client(), &user, Some("rp-ping-token")).await;
    let process_id = process_of(&proxy, &user).await["process_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/processes/{process_id}/deny");

    for bad in [
        json!({"error_description": ""}),
        json!({"error_description": "x".repeat(501)}),
        json!({"error_description": "line\nbreak"}),
        json!({"reason": "unknown field"}),
        json!(["not", "an", "object"]),
    ] {
        let refused = proxy.operator(Method::POST, &path, Some(bad.clone())).await;
        assert_eq!((refused.status, refused.error()), (400, "invalid_request"), "{bad}");
    }
    let denied = proxy
        .operator(
            Method::POST,
            &path,
            Some(json!({"error_description": "Identity document rejected"})),
        )
        .await;
    assert_eq!(denied.status, 200, "{}", denied.json);
    assert_eq!(denied.json["status"], "denied");
    assert_eq!(denied.json["description"], "Identity document rejected");

    // The RP is pinged with its own token and its id, as for a webhook denial.
    assert!(receiver.wait_for(1, Duration::from_secs(10)).await, "no ping");
    let (auth, body) = receiver.received.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer rp-ping-token"));
    assert_eq!(body["deferred_auth_id"], id.as_str());

    let poll = proxy.poll(&dtr_client(), &id).await;
    assert_eq!((poll.status, poll.error()), (400, "access_denied"), "{}", poll.json);
    assert_eq!(poll.json["error_description"], "Identity document rejected");
    let again = proxy.operator(Method::POST, &path, None).await;
    assert_eq!(again.status, 409, "{}", again.json);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"dtr_process_events_total{event="deferred.denied"} 1"#),
        "{metrics}"
    );
}

async fn extend(store: StoreKind) {
    // Processes of this client live 3 s; the operator may extend them to 120 s in all.
    let options = Options::new(store)
        .client(json!({"client_id": "dtr-client", "expires_in": 3}))
        .env("DTR_OPERATOR_MAX_LIFETIME", "120");
    let proxy = start(options).await;
    let user = unique("extended");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let before = process_of(&proxy, &user).await;
    let process_id = before["process_id"].as_str().unwrap().to_owned();
    let path = format!("/processes/{process_id}/extend");

    for bad in [
        json!({}),
        json!({"extend_by": 0}),
        json!({"extend_by": -5}),
        json!({"extend_by": "60"}),
        json!({"extend_by": 1.5}),
        json!({"extend_by": 1e300}),
    ] {
        let refused = proxy.operator(Method::POST, &path, Some(bad.clone())).await;
        assert_eq!((refused.status, refused.error()), (400, "invalid_request"), "{bad}");
    }
    let too_long = proxy
        .operator(Method::POST, &path, Some(json!({"extend_by": 119})))
        .await;
    assert_eq!(
        (too_long.status, too_long.error()),
        (409, "conflict"),
        "{}",
        too_long.json
    );
    assert!(
        too_long.json["error_description"]
            .as_str()
            .unwrap()
            .contains("DTR_OPERATOR_MAX_LIFETIME"),
        "{}",
        too_long.json
    );

    let extended = proxy
        .operator(Method::POST, &path, Some(json!({"extend_by": 60.0})))
        .await;
    assert_eq!(extended.status, 200, "{}", extended.json);
    assert_eq!(
        extended.json["expires_at"].as_u64().unwrap(),
        before["expires_at"].as_u64().unwrap() + 60
    );

    // Past its first expiry (and a round of the expiry worker) it is still pending.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let poll = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(
        (poll.status, poll.error()),
        (400, "authorization_pending"),
        "{}",
        poll.json
    );
    let listed = proxy.operator(Method::GET, "/processes?status=pending", None).await;
    assert_eq!(listed.json["processes"].as_array().unwrap().len(), 1, "{}", listed.json);
    let metrics = proxy.metrics().await;
    assert!(!metrics.contains(r#"event="deferred.expired""#), "{metrics}");

    // It still ends: approved and delivered as usual.
    let approved = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(approved.status, 200, "{}", approved.json);
    wait_interval(1).await;
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let finished = proxy
        .operator(Method::POST, &path, Some(json!({"extend_by": 10})))
        .await;
    assert_eq!(
        (finished.status, finished.error()),
        (409, "conflict"),
        "{}",
        finished.json
    );
}

/// Many processes on Redis, written straight into the store the proxy uses: pages of 100 go
/// through all of them once, and a filter that matches few reads at most the scan budget
/// (1000 queue entries) per request, handing back a cursor to go on from. Prints the time of
/// each kind of request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_are_paged_within_the_scan_budget() {
    use dtr_proxy::records::{AuthMethod, ClientBinding, ProcessRecord, Records, Requested, Sealed, Status};
    const COUNT: usize = 1500;
    let prefix = unique("bulk");
    let proxy = start(Options::new(StoreKind::Redis).env("DTR_REDIS_KEY_PREFIX", prefix.clone())).await;
    let mut env = base_env(1, 1);
    env.push(("DTR_REDIS_URL".into(), redis().url.clone()));
    env.push(("DTR_REDIS_KEY_PREFIX".into(), prefix));
    let config = dtr_proxy::Config::from_env(env).expect("config");
    let store = dtr_proxy::app::connect_store(&config, None).expect("store");
    let records = Records::new(store, config.hash_key.clone(), config.sealer.clone());
    let now = now_s() * 1000;
    let written = std::time::Instant::now();
    let mut rare = Vec::new();
    for i in 0..COUNT {
        // One in 150 belongs to the rare client, spread over the whole queue.
        let client_id = if i % 150 == 7 { "bulk-rare" } else { "bulk-common" };
        let record = ProcessRecord {
            process_id: format!("bulk{i:05}"),
            realm: proxy.realm.clone(),
            client_id: client_id.into(),
            client: ClientBinding {
                method: AuthMethod::ClientSecretBasic,
                fingerprint: None,
            },
            jkt: None,
            x5t: None,
            status: Status::Pending,
            description: None,
            interaction: None,
            interval: 5,
            strikes: 0,
            last_strike: None,
            created_at: now,
            expires_at: now + 3_600_000 + i as u64,
            completed_at: None,
            delivering_since: None,
            sub: Some(format!("bulk-user-{}", i % 500)),
            sid: None,
            nonce: None,
            requested: Requested::default(),
            ping_attempts: 0,
            release_in_doubt: false,
            sealed: Sealed::default(),
            trace: None,
        };
        if client_id == "bulk-rare" {
            rare.push(record.process_id.clone());
        }
        records
            .create(&records.process_hash(&format!("bulk-id-{i}")), &record)
            .await
            .expect("create");
    }
    println!("wrote {COUNT} processes in {:?}", written.elapsed());

    let timed = |query: String| {
        let proxy = &proxy;
        async move {
            let started = std::time::Instant::now();
            let reply = proxy.operator(Method::GET, &query, None).await;
            assert_eq!(reply.status, 200, "{query}: {}", reply.json);
            (reply.json, started.elapsed())
        }
    };
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    let mut pages = Vec::new();
    loop {
        let (page, took) = timed(format!("/processes?limit=100{cursor}")).await;
        pages.push(took);
        for process in page["processes"].as_array().unwrap() {
            assert!(
                seen.insert(process["process_id"].as_str().unwrap().to_owned()),
                "seen twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), COUNT);
    assert_eq!(pages.len(), COUNT / 100);
    pages.sort();
    println!(
        "unfiltered pages of 100: median {:?}, slowest {:?}",
        pages[pages.len() / 2],
        pages[pages.len() - 1]
    );

    // The rare client: the first request stops at the budget with a cursor, the next one
    // finishes the queue; together they find every one of its processes.
    let (first, first_took) = timed("/processes?client_id=bulk-rare&limit=100".into()).await;
    let next = first["next_cursor"]
        .as_str()
        .expect("a cursor after the scan budget")
        .to_owned();
    let found_first = first["processes"].as_array().unwrap().len();
    assert!(found_first > 0 && found_first < rare.len(), "{found_first}");
    let (second, second_took) = timed(format!("/processes?client_id=bulk-rare&limit=100&cursor={next}")).await;
    assert!(second["next_cursor"].is_null());
    let mut found: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["processes"].as_array().unwrap().iter())
        .map(|p| p["process_id"].as_str().unwrap().to_owned())
        .collect();
    found.sort();
    assert_eq!(found, rare);
    println!("filtered scan of 1000 queue entries: {first_took:?}; the remaining 500: {second_took:?}");

    let (by_sub, sub_took) = timed("/processes?sub=bulk-user-7".into()).await;
    assert_eq!(by_sub["processes"].as_array().unwrap().len(), 3);
    println!("search by sub (3 processes): {sub_took:?}");
}

/// The same API on a Redis Cluster (three masters with replicas): the active queue in one
/// slot, each process in its own; list in pages, then deny, extend and cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_on_a_redis_cluster() {
    let bed = common::faults::ClusterBed::start(3);
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", bed.seed_url())
            .env("DTR_REDIS_CLUSTER", "true")
            .env("DTR_REDIS_KEY_PREFIX", unique("op")),
    )
    .await;
    let users: Vec<String> = (0..3).map(|i| unique(&format!("clustered{i}-"))).collect();
    let mut ids = Vec::new();
    for user in &users {
        ids.push(proxy.start_process(&dtr_client(), user, None).await.0);
    }
    let first = proxy.operator(Method::GET, "/processes?limit=2", None).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["processes"].as_array().unwrap().len(), 2);
    let cursor = first.json["next_cursor"].as_str().expect("cursor").to_owned();
    let second = proxy
        .operator(Method::GET, &format!("/processes?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(second.json["processes"].as_array().unwrap().len(), 1, "{}", second.json);
    assert!(second.json["next_cursor"].is_null());

    let mut process_ids = Vec::new();
    for user in &users {
        process_ids.push(
            process_of(&proxy, user).await["process_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let denied = proxy
        .operator(Method::POST, &format!("/processes/{}/deny", process_ids[0]), None)
        .await;
    assert_eq!(denied.json["status"], "denied", "{}", denied.json);
    let extended = proxy
        .operator(
            Method::POST,
            &format!("/processes/{}/extend", process_ids[1]),
            Some(json!({"extend_by": 3600})),
        )
        .await;
    assert_eq!(extended.status, 200, "{}", extended.json);
    let cancelled = proxy
        .operator(Method::POST, &format!("/processes/{}/cancel", process_ids[2]), None)
        .await;
    assert_eq!(cancelled.json["status"], "cancelled", "{}", cancelled.json);

    wait_interval(1).await;
    let polls = [
        proxy.poll(&dtr_client(), &ids[0]).await,
        proxy.poll(&dtr_client(), &ids[1]).await,
        proxy.poll(&dtr_client(), &ids[2]).await,
    ];
    let errors: Vec<&str> = polls.iter().map(Reply::error).collect();
    assert_eq!(errors, ["access_denied", "authorization_pending", "access_denied"]);
    let shown = proxy.process(&process_ids[1]).await;
    assert_eq!(
        shown["expires_at"].as_u64().unwrap(),
        extended.json["expires_at"].as_u64().unwrap()
    );
    let active = proxy.operator(Method::GET, "/processes", None).await;
    assert_eq!(
        active.json["processes"].as_array().unwrap().len(),
        2,
        "cancelled is off the queue"
    );
}
