//! Outages lose nothing: a store or OP outage answers 503/502 with Retry-After, pass-through
//! keeps working without the store, and every process survives to completion. Also the real
//! binary: configuration errors and a clean SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn store_outage_is_503_with_retry_after_and_pass_through_keeps_working() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", format!("redis://127.0.0.1:{closed}"))
            .env("DTR_UPSTREAM_TIMEOUT", "2")
            .env("DTR_DEFAULT_INTERVAL", "7"),
    )
    .await;
    let jwks = proxy
        .http
        .get(proxy.url("/protocol/openid-connect/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200, "pass-through does not need the store");

    let page = proxy.login(&proxy.auth_params("dtr-client", "s", "n"), "x", None).await;
    assert_eq!(page.status, 503);
    assert!(page.headers.contains_key("retry-after"));

    let poll = proxy.poll(&dtr_client(), "some-id").await;
    assert_eq!((poll.status, poll.error()), (503, "temporarily_unavailable"));
    // The failed poll may have moved the poll clock: it is told to wait its interval.
    assert_eq!(
        poll.headers["retry-after"], "7",
        "a poll waits no less than its interval"
    );

    let ready = proxy.http.get(format!("{}/readyz", proxy.admin)).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a store blip must not take replicas out of service"
    );
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_ne!(body["store"], "up");
    // Each refused command is counted, by command.
    let metrics = proxy.metrics().await;
    let failed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dtr_store_errors_total{command="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed >= 2.0, "{metrics}");
}

#[tokio::test]
async fn op_outage_at_exchange_and_delivery_loses_no_process() {
    let relay = Relay::start(op().port).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Redis), relay.port).await;
    let user = unique("olga");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;

    relay.set_down(true);
    let failed = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert!(matches!(failed.status, 502..=504), "{} {}", failed.status, failed.json);
    assert_eq!(failed.error(), "temporarily_unavailable");
    assert!(failed.headers.contains_key("retry-after"));

    relay.set_down(false);
    let exchange = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "the code survived the outage: {}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().unwrap().to_owned();
    assert_eq!(
        proxy
            .complete(&json!({"outcome": "approved", "sub": user}))
            .await
            .status,
        200
    );

    wait_interval(1).await;
    relay.set_down(true);
    let failed = proxy.poll(&dtr_client(), &id).await;
    assert!(matches!(failed.status, 502..=504), "{} {}", failed.status, failed.json);
    assert!(failed.headers.contains_key("retry-after"));

    relay.set_down(false);
    wait_interval(1).await;
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(
        tokens.status, 200,
        "the approved process survived the outage: {}",
        tokens.json
    );
}

#[tokio::test]
async fn op_outage_on_pass_through_is_502_with_retry_after() {
    let relay = Relay::start(op().port).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), relay.port).await;
    relay.set_down(true);
    let response = proxy
        .http
        .get(proxy.url("/protocol/openid-connect/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.headers().contains_key("retry-after"));
}

#[test]
fn binary_lists_every_configuration_error_and_exits_non_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_dtr-proxy"))
        .env_clear()
        .env("DTR_PUBLIC_URL", "not a url")
        .env("DTR_REDIS_URL", "redis://localhost:6379")
        .env("DTR_DEFAULT_INTERVAL", "0")
        .output()
        .expect("run binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in [
        "DTR_UPSTREAM_URL",
        "DTR_PUBLIC_URL",
        "DTR_HASH_KEY",
        "DTR_TOKEN_KEYS",
        "DTR_DEFAULT_INTERVAL",
    ] {
        assert!(stderr.contains(problem), "{problem} missing from:\n{stderr}");
    }
}

#[test]
fn check_config_prints_the_effective_settings_or_every_error() {
    let bad = Command::new(env!("CARGO_BIN_EXE_dtr-proxy"))
        .arg("check-config")
        .env_clear()
        .env("DTR_PUBLIC_URL", "not a url")
        .output()
        .expect("run binary");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("DTR_UPSTREAM_URL") && stderr.contains("DTR_PUBLIC_URL"),
        "{stderr}"
    );

    let good = Command::new(env!("CARGO_BIN_EXE_dtr-proxy"))
        .arg("check-config")
        .env_clear()
        .env("DTR_UPSTREAM_URL", "http://127.0.0.1:8081")
        .env("DTR_PUBLIC_URL", "https://id.example.com")
        .env("DTR_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .output()
        .expect("run binary");
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    let effective: serde_json::Value = serde_json::from_slice(&good.stdout).expect("JSON");
    assert_eq!(effective["public_url"], "https://id.example.com/");
    assert_eq!(effective["webhook_secret"], "(set)");
    assert_eq!(effective["store"]["kind"], "embedded");
    assert!(!String::from_utf8_lossy(&good.stdout).contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
}

/// The binary in front of the shared OP on two free ports, with `env` on top; its ports.
fn spawn_binary(env: &[(&str, &str)], stdout: Stdio) -> (tokio::process::Child, [u16; 2]) {
    let ports = [free_port(), free_port()];
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dtr-proxy"))
        .env_clear()
        .env("DTR_UPSTREAM_URL", format!("http://127.0.0.1:{}", op().port))
        .env("DTR_PUBLIC_URL", format!("http://127.0.0.1:{}", ports[0]))
        .env("DTR_ALLOW_INSECURE_HTTP", "true")
        .env("DTR_LISTEN", format!("127.0.0.1:{}", ports[0]))
        .env("DTR_ADMIN_LISTEN", format!("127.0.0.1:{}", ports[1]))
        .env("DTR_SHUTDOWN_DELAY", "0")
        .env("DTR_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run binary");
    (child, ports)
}

/// Waits until the binary's admin port answers its health probe.
async fn wait_healthy(http: &reqwest::Client, admin_port: u16) {
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{admin_port}/healthz")).send().await {
            assert_eq!(r.status(), 200, "binary did not come up healthy");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("binary did not come up");
}

#[tokio::test]
async fn binary_serves_and_stops_cleanly_on_sigterm() {
    let (mut child, ports) = spawn_binary(&[], Stdio::null());
    let http = client();
    wait_healthy(&http, ports[1]).await;
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// An upstream that answers every request after `delay`, with `slow` as its body.
async fn slow_upstream(delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    head.clear();
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-type: text/plain\r\n\r\nslow";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// SIGTERM drains: a request in flight is answered in full, an idle keep-alive connection is
/// closed, no new connection is taken, and the binary then exits cleanly.
#[tokio::test]
async fn a_request_in_flight_at_sigterm_is_answered_before_the_binary_exits() {
    let upstream = format!("http://127.0.0.1:{}", slow_upstream(Duration::from_millis(1500)).await);
    let (mut child, ports) = spawn_binary(&[("DTR_UPSTREAM_URL", upstream.as_str())], Stdio::null());
    let http = client();
    wait_healthy(&http, ports[1]).await;
    let public = format!("http://127.0.0.1:{}/realms/r/slow", ports[0]);
    // An idle keep-alive connection: open before the signal, with nothing in flight.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let in_flight = tokio::spawn({
        let (http, public) = (http.clone(), public.clone());
        async move { http.get(public).send().await?.text().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let body = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("answered in time")
        .unwrap()
        .expect("the request in flight is answered, not cut off");
    assert_eq!(body, "slow");
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed: {closed:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.is_err(),
        "no new connection once stopped"
    );
}

/// A store on the test Redis, its keys under a prefix of their own.
fn redis_store(prefix: &str) -> dtr_proxy::store::Store {
    dtr_proxy::store::Store::Redis(
        dtr_proxy::store::RedisStore::connect(&dtr_proxy::store::RedisOptions::new(
            dtr_proxy::store::Topology::Standalone {
                url: redis().url.clone(),
            },
            &unique(prefix),
            // Generous: with the suite running eight tests wide on two cores, a first connect
            // (and its role check) can take longer than two seconds; these tests are not about time.
            Duration::from_secs(10),
        ))
        .unwrap(),
    )
}

#[tokio::test]
async fn redis_store_keeps_the_same_contract_as_the_embedded_one() {
    dtr_proxy::store::contract::exercise(&redis_store("c"), "contract").await;
}

#[tokio::test]
async fn a_poll_read_reloads_its_script_after_the_server_lost_it() {
    let store = redis_store("noscript");
    let key = store.key("{p:x}:rec");
    store.put(&key, b"v0000xy", Duration::from_secs(60)).await.unwrap();
    // What a restarted server without persistence (or a new replica) knows: no scripts.
    let flushed = std::process::Command::new("redis-cli")
        .args(["-u", &redis().url, "SCRIPT", "FLUSH"])
        .output()
        .expect("redis-cli (scripts/ensure-deps.sh)");
    assert!(flushed.status.success(), "{flushed:?}");
    let read = store.get_patching(&key, 1, b"1234", b"xy").await.unwrap();
    assert_eq!(read, Some((b"v0000xy".to_vec(), true)), "read as it was, and stamped");
    assert_eq!(store.get(&key).await.unwrap().as_deref(), Some(&b"v1234xy"[..]));
}

#[tokio::test]
async fn expired_login_gets_an_error_page_never_a_redirect() {
    let proxy = start(Options::new(StoreKind::Embedded).env("DTR_LOGIN_TTL", "1")).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(proxy.auth_params("dtr-client", "s", "n"))
        .finish();
    let to_login = browser
        .get(format!("{}?{query}", proxy.url("/protocol/openid-connect/auth")))
        .send()
        .await
        .unwrap();
    let login = to_login.headers()["location"].to_str().unwrap().to_owned();
    let page = browser.get(&login).send().await.unwrap().text().await.unwrap();
    let action = page
        .split("action=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    // The user takes longer than the login lifetime.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut response = browser
        .post(format!("{}{action}", proxy.base))
        .form(&[("username", "slow")])
        .send()
        .await
        .unwrap();
    while response.status().is_redirection() {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(&proxy.base), "redirected out to {location}");
        response = browser.get(&location).send().await.unwrap();
    }
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("expired"));
}

/// Keycloak treats a second redemption of a code as an attack: a code the OP may have acted
/// on is never sent again. The RP hears a 5xx it cannot retry, then `invalid_grant`.
#[tokio::test]
async fn a_lost_answer_to_the_code_redemption_never_replays_the_code() {
    let relay = Relay::start(op().port).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Redis), relay.port).await;
    let (code, verifier) = proxy.deferred_code("dtr-client", &unique("lena")).await;

    relay.set_swallow_answers(true);
    let failed = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert!(matches!(failed.status, 502..=504), "{} {}", failed.status, failed.json);
    assert_eq!(failed.error(), "server_error", "{}", failed.json);
    assert!(!failed.headers.contains_key("retry-after"), "not retryable");

    relay.set_swallow_answers(false);
    let retried = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(retried.error(), "invalid_grant", "{}", retried.json);
    assert!(
        retried.json["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("deferred_code"),
        "refused by the proxy, not replayed to the OP: {}",
        retried.json
    );
}

/// A release whose answer is lost leaves the grant in doubt (the OP may have rotated it). The
/// next poll retries; if the OP then refuses the grant, the RP hears `invalid_grant` (start
/// over), never a false `access_denied` for a verified user.
#[tokio::test]
async fn a_lost_answer_to_the_release_is_retried_and_never_turns_into_access_denied() {
    let relay = Relay::start(op().port).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Redis), relay.port).await;
    let user = unique("lars");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;
    let exchange = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().unwrap().to_owned();
    let approved = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(approved.status, 200);

    wait_interval(1).await;
    relay.set_swallow_answers(true);
    let failed = proxy.poll(&dtr_client(), &id).await;
    assert!(matches!(failed.status, 502..=504), "{} {}", failed.status, failed.json);
    assert!(failed.headers.contains_key("retry-after"), "a release is retryable");

    relay.set_swallow_answers(false);
    wait_interval(1).await;
    let retried = proxy.poll(&dtr_client(), &id).await;
    // The test OP rotates refresh tokens (and refuses a rotated one), so the retry meets a
    // spent grant; an OP that keeps them (Keycloak's default) hands out the tokens instead.
    assert_eq!(
        retried.error(),
        "invalid_grant",
        "a lost answer is no verdict on the user: {}",
        retried.json
    );
    assert!(
        retried.json["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("lost"),
        "{}",
        retried.json
    );
}

/// With `DTR_ACCESS_LOG`, one structured line per public request, no secret in it, and no
/// colour codes when the output is not a terminal; every request also lands in the latency
/// histogram by route and status class.
#[tokio::test]
async fn access_log_is_one_plain_line_per_request_and_requests_are_timed() {
    let (mut child, ports) = spawn_binary(&[("DTR_LOG", "info"), ("DTR_ACCESS_LOG", "true")], Stdio::piped());
    let http = client();
    let admin = format!("http://127.0.0.1:{}", ports[1]);
    assert!(wait_until_up(&http, &admin).await, "binary did not come up");
    let secret_query = "client_secret=do-not-log-me";
    let response = http
        .get(format!(
            "http://127.0.0.1:{}/realms/none/protocol/openid-connect/certs?{secret_query}",
            ports[0]
        ))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let class = format!("{}xx", status / 100);
    assert!(
        metrics.contains(&format!(
            "dtr_http_request_duration_seconds_count{{route=\"passthrough\",status_class=\"{class}\"}} 1"
        )),
        "{metrics}"
    );

    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut stdout = child.stdout.take().expect("stdout");
    let mut log = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut log),
    )
    .await
    .expect("stops in time")
    .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("dtr::access")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("route=\"passthrough\"") || lines[0].contains("route=passthrough"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&format!("status={status}")), "{}", lines[0]);
    assert!(!log.contains("do-not-log-me"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a pipe: {log}");
}
