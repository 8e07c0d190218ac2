//! The deferred flow end to end over real sockets: a real OP (tests/op) behind the proxy, an
//! RP walking every step, on the embedded store and on a real redis-server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Runs a test body once per store and per profile: the OpenID profile (the default) and the
/// OAuth (IETF) profile, the latter with the test realm set to it (`DTR_IETF_REALMS`).
macro_rules! on_both_stores_and_profiles {
    (@store $module:ident, $store:expr, $($name:ident => $body:expr;)*) => {
        mod $module {
            use super::*;
            on_both_stores_and_profiles!(@profile openid, $store, Profile::OpenId, $($name => $body;)*);
            on_both_stores_and_profiles!(@profile ietf, $store, Profile::Ietf, $($name => $body;)*);
        }
    };
    (@profile $module:ident, $store:expr, $profile:expr, $($name:ident => $body:expr;)*) => {
        mod $module {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { ($body)($store, $profile).await }
            )*
        }
    };
    ($($name:ident => $body:expr;)*) => {
        on_both_stores_and_profiles!(@store embedded, StoreKind::Embedded, $($name => $body;)*);
        on_both_stores_and_profiles!(@store redis, StoreKind::Redis, $($name => $body;)*);
    };
}

on_both_stores_and_profiles! {
    happy_path_delivers_fresh_tokens_once => happy_path;
    every_poll_error_is_the_drafts => poll_errors;
    deferred_code_is_single_use_and_bound_to_its_client => code_replay_and_cross_client;
    of_concurrent_polls_exactly_one_gets_the_tokens => concurrent_polls;
    a_burst_of_polls_while_pending_is_told_to_slow_down => burst_while_pending;
    ping_is_retried_until_the_rp_accepts_it => ping_retries;
    cancelled_process_is_denied_and_never_pinged => cancel;
    process_expires_after_its_configured_lifetime => expiry;
    webhook_addressing_and_progress => webhook_rules;
    an_interaction_need_reaches_polls_until_cleared => interaction;
}

async fn happy_path(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("alice");
    let (verifier, challenge) = pkce();
    let mut params = rp.auth_params("dtr-client", "rp-state-1", "nonce-1");
    params.push(("code_challenge", &challenge));
    params.push(("code_challenge_method", "S256"));
    let ack = proxy.acknowledge(&params, &user).await;
    assert_eq!(ack.mode, "query");
    let code = ack.get(rp.code_param()).expect("the proxy's code").to_owned();
    let random = code
        .strip_prefix("deferred.")
        .filter(|_| profile == Profile::Ietf)
        .unwrap_or(&code);
    assert!(
        random.len() >= 27
            && random
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    match profile {
        Profile::OpenId => assert_eq!(ack.get("code"), None, "an acknowledgment never carries code"),
        Profile::Ietf => assert_eq!(
            ack.get("deferred_code"),
            None,
            "an IETF acknowledgment is a code flow's"
        ),
    }
    assert_eq!(ack.get("state"), Some("rp-state-1"));
    assert_eq!(ack.get("iss"), Some(proxy.issuer.as_str()));

    let exchange = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    let id = rp
        .id_of(&exchange)
        .unwrap_or_else(|| panic!("{} {}", exchange.status, exchange.json));
    assert!(id.len() >= 27, "at least 160 bits");
    assert_eq!(exchange.json["interval"], 1);
    assert_eq!(exchange.json["expires_in"], 86400);
    assert!(
        exchange.json["access_token"].is_null(),
        "no tokens before the verification"
    );
    let interim = match profile {
        Profile::OpenId => {
            let interim = jwt_claims(exchange.json["interim_id_token"].as_str().expect("interim_id_token"));
            assert_eq!(interim["sub"], user.as_str());
            assert_eq!(interim["nonce"], "nonce-1");
            assert_eq!(interim["iss"], proxy.issuer.as_str());
            Some(interim)
        }
        Profile::Ietf => {
            assert!(exchange.json["interim_id_token"].is_null(), "{}", exchange.json);
            assert!(exchange.json["deferred_auth_id"].is_null(), "{}", exchange.json);
            None
        }
    };

    let pending = rp.poll(&dtr_client(), &id).await;
    assert_eq!(
        (pending.status, pending.error()),
        (400, "authorization_pending"),
        "{}",
        pending.json
    );
    assert!(pending.json["error_description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    let process_id = completed.json["changed"][0]["process_id"]
        .as_str()
        .expect("process id")
        .to_owned();
    assert_eq!(completed.json["changed"][0]["status"], "approved");
    assert_eq!(proxy.process(&process_id).await["status"], "approved");

    wait_interval(1).await;
    let tokens = rp.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert_eq!(tokens.headers["cache-control"], "no-store");
    for field in ["access_token", "id_token", "refresh_token", "token_type", "expires_in"] {
        assert!(
            !tokens.json[field].is_null(),
            "token response lacks {field}: {}",
            tokens.json
        );
    }
    let id_token = jwt_claims(tokens.json["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["sub"], user.as_str());
    assert_eq!(id_token["nonce"], "nonce-1");
    if let Some(interim) = interim {
        assert!(
            id_token["iat"].as_u64() >= interim["iat"].as_u64(),
            "tokens are issued at poll time"
        );
    }

    wait_interval(1).await;
    let spent = rp.poll(&dtr_client(), &id).await;
    assert_eq!((spent.status, spent.error()), (400, "invalid_grant"));
    if profile == Profile::Ietf {
        // IETF §6.6: to the client it was issued to, a redeemed code says so.
        let description = spent.json["error_description"].as_str().unwrap_or_default();
        assert!(description.contains("already redeemed"), "{}", spent.json);
    }
    assert_eq!(proxy.process(&process_id).await["status"], "delivered");

    // The delivered refresh token is the RP's own: a plain refresh through the proxy works.
    let refreshed = proxy
        .token(
            &dtr_client(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens.json["refresh_token"].as_str().unwrap()),
            ],
            None,
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.json);

    let metrics = proxy.metrics().await;
    assert!(metrics.contains("dtr_polls_total{result=\"delivered\"} 1"), "{metrics}");
    // The pending poll, counted by the counters looked up once at start, and the spent one.
    assert!(
        metrics.contains("dtr_polls_total{result=\"authorization_pending\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dtr_polls_total{result=\"invalid_grant\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dtr_requests_total{route=\"token_poll\",outcome=\"client_error\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dtr_process_events_total{event=\"deferred.started\"} 1"),
        "{metrics}"
    );
    if store == StoreKind::Redis {
        // Redis's own latency, by command: the flow read (GET) and ran scripts (eval).
        for command in ["GET", "eval"] {
            let count = metric_value(
                &metrics,
                &format!("dtr_store_request_duration_seconds_count{{command=\"{command}\"}}"),
            );
            assert!(count.is_some_and(|n| n >= 1.0), "{command}: {metrics}");
        }
        assert!(!metrics.contains("dtr_store_errors_total{"), "{metrics}");
    }
}

async fn poll_errors(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("bob");
    let (id, _) = rp.start_process(&dtr_client(), &user, None).await;

    let unknown = rp
        .poll(&dtr_client(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_grant"));

    let wrong_secret = rp.poll(&Auth::Basic("dtr-client", "not-the-secret"), &id).await;
    assert_eq!((wrong_secret.status, wrong_secret.error()), (401, "invalid_client"));
    assert!(wrong_secret.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    let foreign = rp.poll(&Auth::Post("dtr-post", "dtr-post-secret"), &id).await;
    assert_eq!((foreign.status, foreign.error()), (400, "invalid_grant"));
    assert_eq!(
        foreign.json["error_description"], unknown.json["error_description"],
        "no oracle"
    );

    wait_interval(1).await;
    let pending = rp.poll(&dtr_client(), &id).await;
    assert_eq!(pending.error(), "authorization_pending");
    let too_fast = rp.poll(&dtr_client(), &id).await;
    assert_eq!((too_fast.status, too_fast.error()), (400, "slow_down"));
    assert!(
        too_fast.json["error_description"]
            .as_str()
            .unwrap()
            .contains("6 seconds"),
        "{}",
        too_fast.json
    );

    let denied = proxy
        .complete(&json!({"outcome": "denied", "sub": user, "error_description": "Document could not be verified"}))
        .await;
    assert_eq!(denied.status, 200);
    wait_interval(6).await;
    let refused = rp.poll(&dtr_client(), &id).await;
    assert_eq!((refused.status, refused.error()), (400, "access_denied"));
    assert_eq!(refused.json["error_description"], "Document could not be verified");
}

async fn code_replay_and_cross_client(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let (code, verifier) = rp.deferred_code("dtr-client", &unique("carol")).await;
    let first = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    assert!(rp.id_of(&first).is_some(), "{}", first.json);
    let replay = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!((replay.status, replay.error()), (400, "invalid_grant"));

    let (code, verifier) = rp.deferred_code("dtr-client", &unique("carol")).await;
    let stolen = rp
        .exchange(&Auth::Post("dtr-post", "dtr-post-secret"), &code, &verifier, None)
        .await;
    assert_eq!((stolen.status, stolen.error()), (400, "invalid_grant"));
    // Burnt by the attempt: the rightful client cannot use it afterwards either.
    let after = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(after.error(), "invalid_grant");
}

async fn concurrent_polls(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("dave");
    let (id, _) = rp.start_process(&dtr_client(), &user, None).await;
    assert_eq!(
        proxy
            .complete(&json!({"outcome": "approved", "sub": user}))
            .await
            .status,
        200
    );
    wait_interval(1).await;
    let auth = dtr_client();
    // A burst: on Redis every loser's strike is a compare-and-set a round trip after its
    // read, and most find the record changed each time; they are still answered slow_down.
    let polls = (0..32).map(|_| rp.poll(&auth, &id));
    let replies = futures_util::future::join_all(polls).await;
    let winners = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        winners,
        1,
        "{:?}",
        replies.iter().map(|r| r.json.clone()).collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != 200) {
        assert!(
            ["slow_down", "authorization_pending", "invalid_grant"].contains(&reply.error()),
            "loser got {}",
            reply.json
        );
    }
}

async fn burst_while_pending(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let (id, _) = rp.start_process(&dtr_client(), &unique("frank"), None).await;
    wait_interval(1).await;
    let auth = dtr_client();
    let started = std::time::Instant::now();
    let polls = (0..32).map(|_| rp.poll(&auth, &id));
    let replies = futures_util::future::join_all(polls).await;
    let took = started.elapsed();
    let errors: Vec<_> = replies.iter().map(|r| (r.status, r.error().to_owned())).collect();
    // One poll keeps the interval; the others are too fast. A burst is one strike on either
    // store: the id lives on (no invalid_request), and none is the store's failure.
    assert!(
        errors
            .iter()
            .all(|(status, error)| *status == 400 && ["authorization_pending", "slow_down"].contains(&error.as_str())),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|(_, error)| error == "authorization_pending"),
        "{errors:?}"
    );
    assert!(errors.iter().any(|(_, error)| error == "slow_down"), "{errors:?}");
    if took < Duration::from_millis(900) {
        // All within a second of the one strike: each names the interval it set, 1 + 5 s.
        for reply in replies.iter().filter(|r| r.error() == "slow_down") {
            let description = reply.json["error_description"].as_str().unwrap_or("");
            assert!(description.contains("6 seconds"), "{description} (burst took {took:?})");
        }
        // Still pending, at the interval of one strike.
        wait_interval(6).await;
        assert_eq!(rp.poll(&auth, &id).await.error(), "authorization_pending");
    }
}

async fn ping_retries(store: StoreKind, profile: Profile) {
    let receiver = ping_receiver(vec![503, 500, 204]).await;
    let options = Options::new(store).client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options.profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("erin");
    let (id, _) = rp.start_process(&dtr_client(), &user, Some("notify-token-1")).await;
    assert_eq!(
        proxy
            .complete(&json!({"outcome": "approved", "sub": user}))
            .await
            .status,
        200
    );
    // Grace (2 s) + 1 s + 2 s of backoff, with margin.
    assert!(
        receiver.wait_for(3, Duration::from_secs(15)).await,
        "got {} pings",
        receiver.count()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "delivered exactly once after two failures");
    for (auth, body) in &received {
        assert_eq!(auth.as_deref(), Some("Bearer notify-token-1"));
        assert_eq!(body, &json!({rp.id_param(): id}));
    }
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("dtr_pings_total{result=\"retry\"} 2"), "{metrics}");
    assert!(metrics.contains("dtr_pings_total{result=\"delivered\"} 1"), "{metrics}");
    let tokens = rp.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
}

async fn cancel(store: StoreKind, profile: Profile) {
    let receiver = ping_receiver(vec![]).await;
    let options = Options::new(store).client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options.profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("frank");
    let (id, _) = rp.start_process(&dtr_client(), &user, None).await;

    let cancelled = rp.cancel(&dtr_client(), &id).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    // Unknown and repeated cancels are 200 too.
    assert_eq!(rp.cancel(&dtr_client(), &id).await.status, 200);
    assert_eq!(rp.cancel(&dtr_client(), "unknown-id").await.status, 200);
    if profile == Profile::OpenId {
        // JSON bodies are accepted (the draft's example).
        let json_cancel = proxy
            .http
            .post(proxy.url("/protocol/openid-connect/deferred/cancel"))
            .basic_auth("dtr-client", Some("dtr-client-secret"))
            .json(&json!({rp.id_param(): id}))
            .send()
            .await
            .unwrap();
        assert_eq!(json_cancel.status(), 200);
    }
    let wrong = rp.cancel(&Auth::Basic("dtr-client", "wrong"), &id).await;
    assert_eq!((wrong.status, wrong.error()), (401, "invalid_client"));

    let late = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(late.status, 404, "a cancelled process is no longer open: {}", late.json);
    let poll = rp.poll(&dtr_client(), &id).await;
    assert_eq!((poll.status, poll.error()), (400, "access_denied"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count(), 0, "no ping for a cancelled process");
}

async fn expiry(store: StoreKind, profile: Profile) {
    let receiver = ping_receiver(vec![]).await;
    let options = Options::new(store).client(json!({
        "client_id": "dtr-client", "expires_in": 2, "notification_endpoint": receiver.url
    }));
    let proxy = start(options.profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("gina");
    let (id, exchange) = rp.start_process(&dtr_client(), &user, None).await;
    assert_eq!(exchange.json["expires_in"], 2);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let expired = rp.poll(&dtr_client(), &id).await;
    assert_eq!((expired.status, expired.error()), (400, "expired_token"));
    let late = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(late.json["changed"], json!([]), "{}", late.json);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.count(), 0, "no ping for an expired process");
    assert!(proxy
        .metrics()
        .await
        .contains("dtr_process_events_total{event=\"deferred.expired\"} 1"));
}

async fn webhook_rules(store: StoreKind, profile: Profile) {
    let proxy = start(Options::new(store).profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("hank");
    let (id, _) = rp.start_process(&dtr_client(), &user, None).await;
    let body = json!({"outcome": "approved", "sub": user});

    // Forged, stale and replayed deliveries: tests/hostile_input.rs.
    let unmatched = proxy.complete(&json!({"outcome": "approved", "sub": "nobody"})).await;
    assert_eq!(unmatched.status, 404);
    let malformed = proxy.complete(&json!({"outcome": "maybe", "sub": user})).await;
    assert_eq!(malformed.status, 400);
    let ambiguous = proxy
        .complete(&json!({"outcome": "approved", "sub": user, "sid": "x"}))
        .await;
    assert_eq!(ambiguous.status, 400);
    let other_client = proxy
        .complete(&json!({"outcome": "approved", "sub": user, "client_id": "dtr-post"}))
        .await;
    assert_eq!(
        (other_client.status, &other_client.json["held"]),
        (202, &json!(true)),
        "an outcome for a client without a process yet waits for its exchange"
    );

    // Progress reaches pending polls.
    let progress = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "error_description": "Video check: 2 of 3"}))
        .await;
    assert_eq!(progress.status, 200);
    let pending = rp.poll(&dtr_client(), &id).await;
    assert_eq!(pending.json["error_description"], "Video check: 2 of 3");

    let first = proxy.complete(&body).await;
    assert_eq!(first.status, 200);
    let process_id = first.json["changed"][0]["process_id"].as_str().unwrap().to_owned();

    // Addressed by process_id, a finished process reports itself unchanged.
    let again = proxy
        .complete(&json!({"outcome": "denied", "process_id": process_id}))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["unchanged"][0]["status"], "approved");
    assert_eq!(proxy.process(&process_id).await["status"], "approved");
}

/// The count of `dtr_polls_total{result}` on the admin port.
async fn polls_counted(proxy: &Proxy, result: &str) -> u64 {
    let metrics = proxy.metrics().await;
    let line = format!("dtr_polls_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// The verification service needs the end-user again (a video-ident slot): a progress update
/// names where. An IETF client's polls answer `interaction_required` with `interaction_uri`
/// (IETF §6.4, §6.6), an OpenID client's `authorization_pending` with the URL in the progress
/// text (OID §10, §14.4). The answer comes from the record the poll reads; a progress update
/// without the URL clears it, the outcome too, and asking for an interaction pings no one
/// (both drafts ping on resolution only).
async fn interaction(store: StoreKind, profile: Profile) {
    let receiver = ping_receiver(vec![204]).await;
    let options = Options::new(store).client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options.profile(profile)).await;
    let rp = proxy.rp(profile);
    let user = unique("iris");
    let (id, _) = rp.start_process(&dtr_client(), &user, Some("notify-token-2")).await;
    let uri = "https://idv.example/appointments/book?ticket=Zm9vYmFy&lang=de";
    let waiting_label = match profile {
        Profile::Ietf => "interaction_required",
        Profile::OpenId => "authorization_pending",
    };
    let counted_before = polls_counted(&proxy, waiting_label).await;

    let asked = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "error_description": "step=video_ident", "interaction_uri": uri}))
        .await;
    assert_eq!(asked.status, 200, "{}", asked.json);
    assert_eq!(asked.json["changed"][0]["status"], "pending");
    let process_id = asked.json["changed"][0]["process_id"].as_str().unwrap().to_owned();
    let view = proxy.process(&process_id).await;
    assert_eq!(view["interaction_required"], true, "{view}");
    assert!(
        !view.to_string().contains("idv.example"),
        "the URL stays sealed: {view}"
    );

    let waiting = rp.poll(&dtr_client(), &id).await;
    assert_eq!(waiting.status, 400, "{}", waiting.json);
    assert_eq!(waiting.headers["cache-control"], "no-store");
    let expected = match profile {
        Profile::Ietf => json!({
            "error": "interaction_required",
            "error_description": "step=video_ident",
            "interaction_uri": uri,
        }),
        Profile::OpenId => json!({
            "error": "authorization_pending",
            "error_description": format!("step=video_ident; interaction_uri={uri}"),
        }),
    };
    assert_eq!(waiting.json, expected, "nor deferral_code nor interval is repeated");
    assert_eq!(polls_counted(&proxy, waiting_label).await, counted_before + 1);

    // A later progress update without the URL clears it.
    let progressed = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "error_description": "step=review"}))
        .await;
    assert_eq!(progressed.status, 200, "{}", progressed.json);
    assert_eq!(proxy.process(&process_id).await["interaction_required"], false);
    wait_interval(1).await;
    let pending = rp.poll(&dtr_client(), &id).await;
    assert_eq!(
        pending.json,
        json!({"error": "authorization_pending", "error_description": "step=review"})
    );

    // Asked again (IETF §6.6: either direction), without a progress text this time.
    let again = "https://idv.example/upload/page-2";
    assert_eq!(
        proxy
            .complete(&json!({"outcome": "pending", "process_id": process_id, "interaction_uri": again}))
            .await
            .status,
        200
    );
    wait_interval(1).await;
    let waiting = rp.poll(&dtr_client(), &id).await;
    match profile {
        Profile::Ietf => {
            assert_eq!(waiting.error(), "interaction_required");
            assert_eq!(waiting.json["interaction_uri"], again);
        }
        Profile::OpenId => {
            assert_eq!(waiting.error(), "authorization_pending");
            assert!(waiting.json["interaction_uri"].is_null(), "{}", waiting.json);
            let description = waiting.json["error_description"].as_str().unwrap();
            assert!(
                description.ends_with(&format!("; interaction_uri={again}")),
                "{description}"
            );
        }
    }
    // Well past the ping grace: asking for an interaction pinged no one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.count(), 0, "no ping before the outcome");

    // The outcome clears it; its ping goes out as always.
    let approved = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(approved.status, 200, "{}", approved.json);
    assert_eq!(proxy.process(&process_id).await["interaction_required"], false);
    assert!(
        receiver.wait_for(1, Duration::from_secs(10)).await,
        "the outcome's ping"
    );
    let tokens = rp.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert!(tokens.json["interaction_uri"].is_null());
}

#[tokio::test]
async fn form_post_and_fragment_acknowledgments() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for (mode, expected) in [("form_post", "form_post"), ("fragment", "fragment"), ("query", "query")] {
        let mut params = proxy.auth_params("dtr-client", "s-&<\"x", "n");
        params.push(("response_mode", mode));
        let ack = proxy.acknowledge(&params, &unique("ivy")).await;
        assert_eq!(ack.mode, expected);
        assert!(ack.get("deferred_code").is_some(), "{ack:?}");
        assert_eq!(ack.get("state"), Some("s-&<\"x"));
        assert_eq!(ack.get("iss"), Some(proxy.issuer.as_str()));
        assert_eq!(ack.get("code"), None);
    }
}

#[tokio::test]
async fn deferred_code_code_in_either_order_is_deferred() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for response_type in ["deferred_code code", "code deferred_code"] {
        let mut params = proxy.auth_params("dtr-client", "s", "n");
        params[0] = ("response_type", response_type);
        let ack = proxy.acknowledge(&params, &unique("jo")).await;
        assert!(
            ack.get("deferred_code").is_some() && ack.get("code").is_none(),
            "{ack:?}"
        );
    }
}

#[tokio::test]
async fn user_denial_at_the_op_reaches_the_rp_as_an_error_acknowledgment() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let params = proxy.auth_params("dtr-client", "st-deny", "n");
    let ack = proxy.login(&params, &unique("kim"), Some("deny")).await.ack();
    assert_eq!(ack.get("error"), Some("access_denied"));
    assert_eq!(ack.get("state"), Some("st-deny"));
    assert_eq!(ack.get("iss"), Some(proxy.issuer.as_str()));
    assert_eq!(ack.get("deferred_code"), None);
}

#[tokio::test]
async fn client_not_allowed_dtr_gets_an_error_page_or_a_known_redirect() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    // plain-client exists at the OP but is not a DTR client: its redirect URIs are unknown to
    // the proxy, so only an error page is safe.
    let params = proxy.auth_params("plain-client", "s", "n");
    let page = proxy.login(&params, "x", None).await;
    assert_eq!(page.status, 400);
    assert!(page.location.is_none());
    assert!(page.html.contains("unauthorized_client"), "{}", page.html);

    // A DTR client with a registered redirect URI gets its error by redirect.
    let mut params = proxy.auth_params("dtr-client", "s-req", "n");
    params.push(("request", "eyJhbGciOiJub25lIn0.e30."));
    let ack = proxy.login(&params, "x", None).await.ack();
    assert_eq!(ack.get("error"), Some("request_not_supported"));
    assert_eq!(ack.get("state"), Some("s-req"));
}

#[tokio::test]
async fn every_client_authentication_method_completes_the_flow() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for auth in [
        Auth::Post("dtr-post", "dtr-post-secret"),
        Auth::Jwt("dtr-jwt"),
        Auth::HsJwt("dtr-hs", DTR_HS_SECRET),
        Auth::Public("dtr-public"),
    ] {
        let user = unique("lee");
        let (id, _) = proxy.start_process(&auth, &user, None).await;
        let pending = proxy.poll(&auth, &id).await;
        assert_eq!(pending.error(), "authorization_pending", "{auth:?}: {}", pending.json);
        assert_eq!(
            proxy
                .complete(&json!({"outcome": "approved", "sub": user}))
                .await
                .status,
            200
        );
        wait_interval(1).await;
        let tokens = proxy.poll(&auth, &id).await;
        assert_eq!(tokens.status, 200, "{auth:?}: {}", tokens.json);
        assert!(tokens.json["access_token"].is_string());
        if let Auth::Public(_) = auth {
            // The RP's proof reached the OP with the final refresh: the tokens are bound to
            // the RP's key, not to the proxy.
            assert_eq!(tokens.json["token_type"], "DPoP", "{}", tokens.json);
        }
    }
}

#[tokio::test]
async fn a_repeated_parameter_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let response = proxy
        .http
        .post(proxy.token_url())
        .basic_auth("dtr-client", Some("dtr-client-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Adeferred&deferred_auth_id=a&deferred_auth_id=b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "invalid_request");
}

/// The verification may finish before the RP exchanges its code: the outcome, named for the
/// client, waits and is applied by the exchange that creates the process.
#[tokio::test]
async fn an_outcome_before_the_exchange_is_held_and_applied() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("early");
    let held = proxy
        .complete(&json!({"outcome": "approved", "sub": user, "client_id": "dtr-client"}))
        .await;
    assert_eq!(held.status, 202, "{}", held.json);
    assert_eq!(held.json["held"], true);
    let unnamed = proxy
        .complete(&json!({"outcome": "approved", "sub": unique("early")}))
        .await;
    assert_eq!(
        unnamed.status, 404,
        "without client_id nothing is held: {}",
        unnamed.json
    );
    assert!(unnamed.json["error_description"]
        .as_str()
        .unwrap_or("")
        .contains("client_id"));

    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "approved at the exchange: {}", tokens.json);
    assert!(tokens.json["access_token"].is_string());
}

/// By `sub` alone, an outcome must not approve another client's process of the same user.
#[tokio::test]
async fn a_subject_outcome_never_reaches_another_clients_process_unasked() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let user = unique("twin");
    let post = Auth::Post("dtr-post", "dtr-post-secret");
    let (basic_id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let (post_id, _) = proxy.start_process(&post, &user, None).await;

    let ambiguous = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(ambiguous.status, 409, "{}", ambiguous.json);
    let pending = proxy.poll(&post, &post_id).await;
    assert_eq!(pending.error(), "authorization_pending", "nothing changed");

    let named = proxy
        .complete(&json!({"outcome": "approved", "sub": user, "client_id": "dtr-client"}))
        .await;
    assert_eq!(
        named.json["changed"].as_array().map(Vec::len),
        Some(1),
        "{}",
        named.json
    );
    wait_interval(1).await;
    assert_eq!(proxy.poll(&dtr_client(), &basic_id).await.status, 200);
    assert_eq!(proxy.poll(&post, &post_id).await.error(), "authorization_pending");

    let everyone = proxy
        .complete(&json!({"outcome": "denied", "sub": user, "all_clients": true}))
        .await;
    assert_eq!(everyone.status, 200, "{}", everyone.json);
    wait_interval(1).await;
    assert_eq!(proxy.poll(&post, &post_id).await.error(), "access_denied");
}

/// A `deferred_code` request pushed to the OP's PAR endpoint (RFC 9126) is rewritten there; the
/// front channel then names only the `request_uri`, and the acknowledgment comes as usual.
#[tokio::test]
async fn a_pushed_deferred_request_is_rewritten_and_acknowledged() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let (verifier, challenge) = pkce();
    let mut params = proxy.auth_params("dtr-client", "pushed-state", "pushed-nonce");
    params.push(("code_challenge", &challenge));
    params.push(("code_challenge_method", "S256"));
    let pushed = proxy
        .post_form(
            &proxy.url("/protocol/openid-connect/ext/par/request"),
            &dtr_client(),
            &params,
            None,
        )
        .await;
    assert_eq!(pushed.status, 201, "{}", pushed.json);
    let request_uri = pushed.json["request_uri"].as_str().expect("request_uri").to_owned();
    assert!(request_uri.starts_with("urn:ietf:params:oauth:request_uri:"));

    let ack = proxy
        .acknowledge(
            &[("client_id", "dtr-client"), ("request_uri", &request_uri)],
            &unique("paula"),
        )
        .await;
    assert_eq!(ack.get("state"), Some("pushed-state"), "{ack:?}");
    assert_eq!(ack.get("code"), None);
    let code = ack.get("deferred_code").expect("deferred_code").to_owned();
    let exchange = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);

    // A pushed request for a client without DTR is refused as PAR refuses: JSON, no redirect.
    let refused = proxy
        .post_form(
            &proxy.url("/protocol/openid-connect/ext/par/request"),
            &Auth::Basic("not-dtr", "secret"),
            &proxy.auth_params("not-dtr", "s", "n"),
            None,
        )
        .await;
    assert_eq!((refused.status, refused.error()), (400, "unauthorized_client"));
}

/// A signed request object cannot be rewritten: the refusal names PAR as the way.
#[tokio::test]
async fn a_signed_request_object_with_deferred_code_is_refused_precisely() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let mut params = proxy.auth_params("dtr-client", "s", "n");
    params.push(("request", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"));
    let answer = proxy.login(&params, &unique("rob"), None).await;
    let location = answer.location.expect("an error redirect to the registered URI");
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    assert!(location.contains("error=request_not_supported"), "{location}");
}

/// A receiver for lifecycle events: answers with `statuses` in turn (then 204) and keeps each
/// delivery's headers and body.
async fn event_receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/dtr/events", listener.local_addr().expect("addr"));
    let log: Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>> = Arc::default();
    let received = log.clone();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (log, statuses) = (log.clone(), statuses.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (log, statuses) = (log.clone(), statuses.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        log.lock().unwrap().push((parts.headers, body));
                        let status = statuses.lock().unwrap().next().unwrap_or(204);
                        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// The verification service hears of what it cannot know by itself: a process started (with
/// what is to be verified), was cancelled, or got its tokens — signed with the events secret,
/// retried until its receiver takes it.
#[tokio::test]
async fn lifecycle_events_reach_the_verification_service_signed_and_retried() {
    const EVENTS_SECRET: &str = "whsec_ZXZlbnRzLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm";
    let (url, received) = event_receiver(vec![503]).await;
    let proxy = start(
        Options::new(StoreKind::Redis)
            .env("DTR_EVENTS_URL", url)
            .env("DTR_EVENTS_SECRET", EVENTS_SECRET),
    )
    .await;
    let user = unique("eve");
    let (cancelled_id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    assert_eq!(proxy.cancel(&dtr_client(), &cancelled_id).await.status, 200);
    let other = unique("evan");
    let (id, _) = proxy.start_process(&dtr_client(), &other, None).await;
    let approved = proxy.complete(&json!({"outcome": "approved", "sub": other})).await;
    assert_eq!(approved.status, 200);
    wait_interval(1).await;
    assert_eq!(proxy.poll(&dtr_client(), &id).await.status, 200);

    // started ×2, cancelled, delivered; the first attempt met a 503 and was retried.
    let mut types = Vec::new();
    for _ in 0..100 {
        let log = received.lock().unwrap().clone();
        types = log
            .iter()
            .filter_map(|(_, body)| serde_json::from_slice::<serde_json::Value>(body).ok())
            .map(|event| event["type"].as_str().unwrap_or("").to_owned())
            .collect();
        if types.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    types.sort();
    assert_eq!(
        types,
        [
            "deferred.cancelled",
            "deferred.delivered",
            "deferred.started",
            "deferred.started",
            "deferred.started"
        ],
        "the started event refused with 503 came again"
    );
    let secret = dtr_proxy::webhook::decode_secret(EVENTS_SECRET).unwrap();
    for (headers, body) in received.lock().unwrap().iter() {
        dtr_proxy::webhook::verify(&secret, headers, body, now_s()).expect("signed with the events secret");
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(event["data"]["process_id"].is_string());
        assert_eq!(event["data"]["client_id"], "dtr-client");
        assert!(
            !String::from_utf8_lossy(body).contains(&cancelled_id),
            "no deferred_auth_id leaves"
        );
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("dtr_event_deliveries_total{result=\"retry\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn one_realm_serves_clients_of_both_profiles_each_in_its_own_names() {
    // The realm is OpenID's; one client is configured for the IETF profile on its own.
    let options = Options::new(StoreKind::Embedded).client(json!({"client_id": "dtr-post", "profile": "ietf"}));
    let proxy = start(options).await;
    let (openid, ietf) = (proxy.rp(Profile::OpenId), proxy.rp(Profile::Ietf));
    let post = Auth::Post("dtr-post", "dtr-post-secret");
    let user = unique("olga");
    let (openid_id, _) = openid.start_process(&dtr_client(), &user, None).await;
    let (ietf_id, _) = ietf.start_process(&post, &user, None).await;

    // Each client is held to its profile's names.
    let crossed = openid.poll(&post, &ietf_id).await;
    assert_eq!(
        (crossed.status, crossed.error()),
        (400, "unauthorized_client"),
        "{}",
        crossed.json
    );
    let crossed = ietf.poll(&dtr_client(), &openid_id).await;
    assert_eq!(
        (crossed.status, crossed.error()),
        (400, "unauthorized_client"),
        "{}",
        crossed.json
    );
    let (code, verifier) = ietf.deferred_code("dtr-post", &user).await;
    let crossed = openid.exchange(&post, &code, &verifier, None).await;
    assert_eq!(crossed.error(), "unauthorized_client", "{}", crossed.json);

    assert_eq!(ietf.poll(&post, &ietf_id).await.error(), "authorization_pending");
    let completed = proxy
        .complete(&json!({"outcome": "approved", "sub": user, "all_clients": true}))
        .await;
    assert_eq!(
        completed.json["changed"].as_array().map(Vec::len),
        Some(2),
        "{}",
        completed.json
    );
    wait_interval(1).await;
    for (rp, auth, id) in [(&openid, dtr_client(), &openid_id), (&ietf, post.clone(), &ietf_id)] {
        let tokens = rp.poll(&auth, id).await;
        assert_eq!(tokens.status, 200, "{:?}: {}", rp.profile, tokens.json);
        assert_eq!(
            jwt_claims(tokens.json["id_token"].as_str().unwrap())["sub"],
            user.as_str()
        );
    }

    // Discovery names both profiles' additions.
    let metadata: serde_json::Value = proxy
        .http
        .get(proxy.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grant_types = metadata["grant_types_supported"].as_array().expect("grant types");
    for grant_type in [
        "urn:openid:params:grant-type:deferred",
        "urn:ietf:params:oauth:grant-type:deferred",
    ] {
        assert!(grant_types.iter().any(|g| g == grant_type), "{metadata}");
    }
    assert_eq!(metadata["deferred_token_response_supported"], true);
    assert!(metadata["response_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "deferred_code"));
}

#[tokio::test]
async fn an_openid_realm_advertises_no_ietf_names() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let metadata: serde_json::Value = proxy
        .http
        .get(proxy.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        metadata.get("deferred_token_response_supported").is_none(),
        "{metadata}"
    );
    assert!(!metadata["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "urn:ietf:params:oauth:grant-type:deferred"));
}

#[tokio::test]
async fn the_ietf_profile_refuses_what_it_does_not_define_and_passes_what_it_does_not_defer() {
    let proxy = start(Options::new(StoreKind::Embedded).profile(Profile::Ietf)).await;
    let rp = proxy.rp(Profile::Ietf);

    // The OpenID response type is not this client's: an error redirect to its known URI.
    let ack = proxy
        .login(&proxy.auth_params("dtr-client", "s-oidc", "n"), "x", None)
        .await
        .ack();
    assert_eq!(ack.get("error"), Some("unsupported_response_type"), "{ack:?}");
    assert_eq!(ack.get("state"), Some("s-oidc"));

    // The proxy's code without the opt-in is refused and not consumed.
    let (code, verifier) = rp.deferred_code("dtr-client", &unique("pia")).await;
    assert!(code.starts_with("deferred."), "{code}");
    let without = proxy
        .token(
            &dtr_client(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(
        (without.status, without.error()),
        (400, "invalid_request"),
        "{}",
        without.json
    );
    let exchange = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    let id = rp.id_of(&exchange).unwrap_or_else(|| panic!("{}", exchange.json));
    // A replayed code is spent.
    let replay = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!((replay.status, replay.error()), (400, "invalid_grant"));
    // A poll without its deferral_code, and the OpenID parameter under the IETF grant.
    let bare = proxy
        .token(&dtr_client(), &[("grant_type", rp.grant_type())], None)
        .await;
    assert_eq!((bare.status, bare.error()), (400, "invalid_request"));
    let misnamed = proxy
        .token(
            &dtr_client(),
            &[("grant_type", rp.grant_type()), ("deferred_auth_id", &id)],
            None,
        )
        .await;
    assert_eq!((misnamed.status, misnamed.error()), (400, "invalid_request"));
    // The OpenID profile's cancellation endpoint is not this client's (IETF §8: revocation).
    let openid_cancel = proxy
        .post_form(
            &proxy.url("/protocol/openid-connect/deferred/cancel"),
            &dtr_client(),
            &[("deferral_code", &id)],
            None,
        )
        .await;
    assert_eq!(
        (openid_cancel.status, openid_cancel.error()),
        (400, "invalid_request"),
        "{}",
        openid_cancel.json
    );
    wait_interval(1).await;
    assert_eq!(rp.poll(&dtr_client(), &id).await.error(), "authorization_pending");
    // Revoked without a token_type_hint (RFC 7009 §2.1: the hint is optional).
    let revoked = proxy
        .post_form(&proxy.revocation_url(), &dtr_client(), &[("token", &id)], None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    wait_interval(1).await;
    assert_eq!(rp.poll(&dtr_client(), &id).await.error(), "access_denied");

    // Without the hint at the authorization endpoint the request is the OP's plain code flow;
    // the opt-in at the token endpoint then gets the OP's immediate answer, which the draft
    // allows (the server decides whether to defer).
    let (verifier, challenge) = pkce();
    let mut params = proxy.auth_params("dtr-client", "s-plain", "n");
    params[0] = ("response_type", "code");
    params.push(("code_challenge", &challenge));
    params.push(("code_challenge_method", "S256"));
    let ack = proxy.acknowledge(&params, &unique("quinn")).await;
    let op_code = ack.get("code").expect("the OP's code").to_owned();
    assert!(!op_code.starts_with("deferred."), "{op_code}");
    let immediate = proxy
        .token(
            &dtr_client(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &op_code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
                ("completion_mode", "deferred"),
            ],
            None,
        )
        .await;
    assert_eq!(immediate.status, 200, "{}", immediate.json);
    assert!(immediate.json["access_token"].is_string(), "{}", immediate.json);

    // The OP's own tokens are revoked by the OP: the request passes through, hint or none.
    let refresh_token = immediate.json["refresh_token"].as_str().expect("refresh token");
    let revoked = proxy
        .post_form(
            &proxy.revocation_url(),
            &dtr_client(),
            &[("token", refresh_token), ("token_type_hint", "refresh_token")],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    let refreshed = proxy
        .token(
            &dtr_client(),
            &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
            None,
        )
        .await;
    assert_eq!(
        refreshed.error(),
        "invalid_grant",
        "revoked at the OP: {}",
        refreshed.json
    );

    // Discovery: the draft's flag, the deferral code at the revocation endpoint, and no
    // OpenID cancellation endpoint.
    let metadata: serde_json::Value = proxy
        .http
        .get(proxy.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["deferred_token_response_supported"], true);
    assert!(metadata["revocation_endpoint_token_type_values_supported"]
        .as_array()
        .is_some_and(|types| types.iter().any(|t| t == DEFERRAL_CODE_TOKEN_TYPE)));
    assert!(
        metadata.get("deferred_authentication_cancellation_endpoint").is_none(),
        "{metadata}"
    );
}

/// IETF §11.1: a deferral code bound to a DPoP key at the exchange is polled and revoked with
/// proofs by that key only — a confidential client's too (the OpenID profile binds public
/// clients only). §7.1: the callback carries the client_notification_token as a Bearer.
#[tokio::test]
async fn an_ietf_deferral_code_is_bound_to_the_exchanges_dpop_key_whatever_the_client() {
    let receiver = ping_receiver(vec![]).await;
    let options = Options::new(StoreKind::Embedded)
        .client(json!({"client_id": "dtr-client", "notification_endpoint": receiver.url}));
    let proxy = start(options.profile(Profile::Ietf)).await;
    let rp = proxy.rp(Profile::Ietf);
    let (key, thief) = (DpopKey::generate(), DpopKey::generate());
    let user = unique("tove");
    let (code, verifier) = rp.deferred_code("dtr-client", &user).await;
    let token_url = proxy.token_url();
    let exchange = proxy
        .token(
            &dtr_client(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
                ("completion_mode", "deferred"),
                ("client_notification_token", "callback-token-of-tove"),
                // The OpenID name is not the IETF profile's: ignored.
                ("deferred_notification_token", "not-this-one"),
            ],
            Some(&key.proof("POST", &token_url)),
        )
        .await;
    let id = rp.id_of(&exchange).unwrap_or_else(|| panic!("{}", exchange.json));
    let poll = |proof: String| ietf_poll(&proxy, &id, proof);
    let stolen = poll(thief.proof("POST", &token_url)).await;
    assert_eq!(
        (stolen.status, stolen.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        stolen.json
    );
    let unproven = rp.poll(&dtr_client(), &id).await;
    assert_eq!(unproven.error(), "invalid_dpop_proof", "{}", unproven.json);
    let pending = poll(key.proof("POST", &token_url)).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);

    // The revocation request is held to the key too; a refused one changes nothing.
    let revocation_url = proxy.revocation_url();
    let form = [("token", id.as_str()), ("token_type_hint", DEFERRAL_CODE_TOKEN_TYPE)];
    let forged = proxy
        .post_form(
            &revocation_url,
            &dtr_client(),
            &form,
            Some(&thief.proof("POST", &revocation_url)),
        )
        .await;
    assert_eq!(forged.error(), "invalid_dpop_proof", "{}", forged.json);

    assert_eq!(
        proxy
            .complete(&json!({"outcome": "approved", "sub": user}))
            .await
            .status,
        200
    );
    assert!(receiver.wait_for(1, Duration::from_secs(10)).await, "no callback");
    let (auth, body) = receiver.received.lock().unwrap()[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer callback-token-of-tove"));
    assert_eq!(body, json!({"deferral_code": id}));
    wait_interval(1).await;
    let tokens = poll(key.proof("POST", &token_url)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert_eq!(tokens.json["token_type"], "DPoP", "{}", tokens.json);
}

async fn ietf_poll(proxy: &Proxy, deferral_code: &str, proof: String) -> Reply {
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:deferred"),
        ("deferral_code", deferral_code),
    ];
    proxy.token(&dtr_client(), &form, Some(&proof)).await
}

/// IETF §5.2: a hint the server does not use leaves the request as it would be without DTR.
/// A configured client's request object is the OP's to verify, and the proxy cannot rewrite
/// what it signs: with a request object (in it or beside it) `completion_mode=deferred` is not
/// used, and the request reaches the OP untouched rather than being refused by the proxy.
#[tokio::test]
async fn an_ietf_hint_with_a_request_object_the_op_verifies_reaches_the_op_untouched() {
    let proxy = start(Options::new(StoreKind::Embedded).profile(Profile::Ietf)).await;
    let rp = proxy.rp(Profile::Ietf);
    let claims = json!({"iss": "dtr-client", "aud": proxy.issuer, "client_id": "dtr-client",
        "response_type": "code", "redirect_uri": REDIRECT_URI, "scope": "openid",
        "state": "s-jar", "completion_mode": "deferred", "exp": now_s() + 300});
    let request = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"dtr-client-secret"),
    )
    .unwrap();
    let mut params = rp.auth_params("dtr-client", "s-jar", "n");
    params.push(("request", &request));
    let answer = proxy.login(&params, &unique("jar"), None).await;
    // The stand-in OP does not take request objects: its own refusal (a 303, without the
    // proxy's description) reaches the RP. The proxy's refusals are 302s that explain.
    assert_eq!(answer.status, 303, "the OP's redirect: {answer:?}");
    let ack = answer.ack();
    assert_eq!(ack.get("error"), Some("request_not_supported"), "{ack:?}");
    assert_eq!(ack.get("error_description"), None, "not the proxy's refusal: {ack:?}");
    assert_eq!(ack.get("state"), Some("s-jar"));
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains("dtr_requests_total{route=\"authorize\",outcome=\"deferred\"}"),
        "not deferred: {metrics}"
    );
}

/// The store commands a poll costs, read from Redis itself (`MONITOR`): a poll of a process
/// waiting on an interaction reads its `interaction_uri` from the record it loads anyway, so
/// it is one command, as a plain pending poll is.
#[tokio::test]
async fn a_poll_waiting_on_an_interaction_is_one_store_round_trip() {
    let prefix = unique("mon");
    let options = Options::new(StoreKind::Redis)
        .profile(Profile::Ietf)
        .env("DTR_REDIS_KEY_PREFIX", prefix.clone());
    let proxy = start(options).await;
    let rp = proxy.rp(Profile::Ietf);
    let user = unique("mona");
    let (id, _) = rp.start_process(&dtr_client(), &user, None).await;
    let asked = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "interaction_uri": "https://idv.example/slot"}))
        .await;
    assert_eq!(asked.status, 200, "{}", asked.json);

    // A first poll loads the read script into Redis's cache (a NOSCRIPT retry, once per
    // server); then the commands on this proxy's process keys while one poll runs.
    assert_eq!(rp.poll(&dtr_client(), &id).await.error(), "interaction_required");
    wait_interval(1).await;
    let log = std::env::temp_dir().join(format!("{prefix}.monitor"));
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-u", &redis().url, "monitor"])
        .stdout(std::fs::File::create(&log).expect("monitor log"))
        .spawn()
        .expect("redis-cli (scripts/ensure-deps.sh)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = rp.poll(&dtr_client(), &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor.kill().expect("stop the monitor");
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(waiting.error(), "interaction_required", "{}", waiting.json);
    assert_eq!(waiting.json["interaction_uri"], "https://idv.example/slot");
    // The poll sends the read and the stamp together, and nothing else: the two commands
    // come from one connection, one right after the other, nothing of anyone else's in
    // between (what a script would do inside Redis is logged as `[0 lua]`).
    let sent: Vec<&str> = seen
        .lines()
        .filter(|line| line.contains(&prefix) && line.contains("{p:"))
        .collect();
    assert_eq!(sent.len(), 2, "{seen}");
    assert!(sent[0].contains("\"GET\""), "{seen}");
    assert!(sent[1].contains("\"BITFIELD\""), "{seen}");
    let connection = |line: &str| line.split(['[', ']']).nth(1).map(str::to_owned);
    assert_eq!(connection(sent[0]), connection(sent[1]), "{seen}");
    let lines: Vec<&str> = seen.lines().collect();
    let first = lines.iter().position(|line| *line == sent[0]).expect("the read");
    assert_eq!(lines.get(first + 1), Some(&sent[1]), "nothing in between: {seen}");
}
