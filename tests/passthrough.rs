//! Everything that is not DTR reaches the OP and comes back unchanged.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

async fn direct_get(path: &str, proxy: &Proxy) -> reqwest::Response {
    // What the OP answers when it sees the proxy's public host, as the proxy makes it see.
    let host = proxy.base.trim_start_matches("http://");
    proxy
        .http
        .get(format!("http://127.0.0.1:{}{path}", op().port))
        .header("x-forwarded-host", host)
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("direct request")
}

#[tokio::test]
async fn jwks_passes_through_byte_for_byte() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let path = format!("/realms/{}/protocol/openid-connect/certs", proxy.realm);
    let via_proxy = proxy.http.get(format!("{}{path}", proxy.base)).send().await.unwrap();
    assert_eq!(via_proxy.status(), 200);
    let content_type = via_proxy.headers()["content-type"].clone();
    let proxied = via_proxy.bytes().await.unwrap();
    let direct = direct_get(&path, &proxy).await;
    assert_eq!(direct.headers()["content-type"], content_type);
    assert_eq!(direct.bytes().await.unwrap(), proxied);
}

#[tokio::test]
async fn plain_code_flow_and_login_page_pass_through_untouched() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let params = [
        ("response_type", "code"),
        ("client_id", "plain-client"),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid"),
        ("state", "plain-state"),
        ("nonce", "plain-nonce"),
    ];
    // The login walk itself goes through the OP's login page (200 HTML) via the proxy.
    let answer = proxy.login(&params, &unique("pat"), None).await;
    let ack = answer.ack();
    let code = ack.get("code").expect("a plain code flow gets its code").to_owned();
    assert_eq!(ack.get("state"), Some("plain-state"), "the RP's own state, untouched");
    assert_eq!(ack.get("deferred_code"), None);
    let tokens = proxy
        .token(
            &Auth::Basic("plain-client", "plain-client-secret"),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
            None,
        )
        .await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert_eq!(
        jwt_claims(tokens.json["id_token"].as_str().unwrap())["nonce"],
        "plain-nonce"
    );
    // OP errors pass through as the OP wrote them.
    let replay = proxy
        .token(
            &Auth::Basic("plain-client", "plain-client-secret"),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
            None,
        )
        .await;
    assert_eq!((replay.status, replay.error()), (400, "invalid_grant"));
}

#[tokio::test]
async fn login_page_is_served_as_the_op_renders_it() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let auth = format!(
        "{}?response_type=code&client_id=plain-client&redirect_uri={}&scope=openid&state=s",
        proxy.url("/protocol/openid-connect/auth"),
        REDIRECT_URI
    );
    let redirect = browser.get(&auth).send().await.unwrap();
    assert!(redirect.status().is_redirection());
    let login = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        login.starts_with(&proxy.base),
        "the OP builds its URLs from the public origin: {login}"
    );
    let cookies: Vec<String> = redirect
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect();
    let page = browser
        .get(&login)
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("name=\"username\""));
}

#[tokio::test]
async fn large_headers_up_to_64_kib_pass() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let cookie = format!("KEYCLOAK_IDENTITY={}", "x".repeat(60 * 1024));
    let response = proxy
        .http
        .get(proxy.url("/protocol/openid-connect/certs"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2
        .get(proxy.url("/protocol/openid-connect/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let jwks: Value = response.json().await.unwrap();
    assert!(jwks["keys"].is_array());
}

#[tokio::test]
async fn discovery_adds_dtr_and_keeps_everything_else() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let path = format!("/realms/{}/.well-known/openid-configuration", proxy.realm);
    // A spoofed forwarding header must not change what the OP sees.
    let via_proxy: Value = proxy
        .http
        .get(format!("{}{path}", proxy.base))
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let direct: Value = direct_get(&path, &proxy).await.json().await.unwrap();
    assert_eq!(via_proxy["issuer"], proxy.issuer.as_str());
    let response_types = via_proxy["response_types_supported"].as_array().unwrap();
    assert!(response_types.contains(&Value::from("deferred_code")));
    assert!(response_types.contains(&Value::from("deferred_code code")));
    assert!(via_proxy["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&Value::from("urn:openid:params:grant-type:deferred")));
    assert_eq!(
        via_proxy["deferred_authentication_cancellation_endpoint"],
        proxy.url("/protocol/openid-connect/deferred/cancel").as_str()
    );
    // DPoP algorithms: those the OP lists that the proxy also verifies (no HMAC, no none).
    let ours = via_proxy["dpop_signing_alg_values_supported"].as_array().unwrap();
    let theirs = direct["dpop_signing_alg_values_supported"].as_array().unwrap();
    assert!(ours.contains(&Value::from("ES256")), "{ours:?}");
    assert!(
        ours.iter().all(|alg| theirs.contains(alg)),
        "{ours:?} not within {theirs:?}"
    );
    for (key, value) in direct.as_object().unwrap() {
        let added = [
            "response_types_supported",
            "grant_types_supported",
            "dpop_signing_alg_values_supported",
        ];
        if !added.contains(&key.as_str()) {
            assert_eq!(&via_proxy[key], value, "{key} changed");
        }
    }
}

/// Reads one request (its head, and a body of the length it gives) from a raw connection
/// and returns its first line; `None` once the connection is closed.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head.lines().next().unwrap_or_default().to_owned())
}

/// An upstream that answers the first request of every connection and closes the
/// connection, unanswered, when the second arrives: what a keep-alive timeout firing just as
/// a request goes out looks like from the proxy. Every request's first line is recorded.
async fn closing_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    recording_upstream(true).await
}

/// An upstream that records every request's first line and answers `ok`; with `close_second`,
/// a connection's second request is met with a close instead (see [`closing_upstream`]).
async fn recording_upstream(close_second: bool) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    answering_upstream(
        close_second,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok",
    )
    .await
}

/// [`recording_upstream`] answering every request with `answer`, as written.
async fn answering_upstream(
    close_second: bool,
    answer: &'static [u8],
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let Some(line) = read_request(&mut stream).await else {
                        return;
                    };
                    log.lock().unwrap().push(line);
                    if close_second && n == 1 {
                        return; // closed without an answer
                    }
                    stream.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, seen)
}

/// A GET that meets a connection the OP closes as it arrives is sent again on a new
/// connection, and the client never sees it. A POST is never sent twice: it never goes on a
/// connection idle long enough to be closing (it takes a new one and is answered), and when a
/// fresh connection closes under it anyway, it gets the 502.
#[tokio::test]
async fn a_stale_upstream_connection_is_retried_for_a_get_and_never_taken_by_a_post() {
    let (port, seen) = closing_upstream().await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), port).await;
    let url = format!("{}/realms/{}/account/theme.css", proxy.base, proxy.realm);
    let first = proxy.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    // Idle long enough to be a candidate for the keep-alive race.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = proxy.http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200, "retried on a new connection");
    assert_eq!(again.text().await.unwrap(), "ok");
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());

    // The pooled connection (one request served) is stale again: the POST takes a new one.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let post = proxy.http.post(&url).body("a=b").send().await.unwrap();
    assert_eq!(post.status(), 200, "a POST goes on a new connection, not the stale one");
    // At once, on that fresh connection, which the OP closes on its second request.
    let post = proxy.http.post(&url).body("a=b").send().await.unwrap();
    assert_eq!(post.status(), 502);
    let posts = seen.lock().unwrap().iter().filter(|l| l.starts_with("POST")).count();
    assert_eq!(posts, 2, "each POST reaches the OP once: {:?}", seen.lock().unwrap());
    // The stale connection stayed for GETs: this one meets its close and is sent again.
    let get = proxy.http.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 7, "{:?}", seen.lock().unwrap());
}

/// The OP's base path (Keycloak's legacy `/auth`) prefixes every target on the wire, and a
/// client's absolute-form target loses its authority; at the root, the target goes as sent.
#[tokio::test]
async fn targets_reach_the_op_under_its_base_path_and_in_origin_form() {
    use tokio::io::AsyncWriteExt;
    let (port, seen) = recording_upstream(false).await;
    let proxy = start_with_upstream(
        Options::new(StoreKind::Embedded).env("DTR_UPSTREAM_URL", format!("http://127.0.0.1:{port}/auth")),
        port,
    )
    .await;
    let url = format!("{}/realms/{}/account/theme.css?v=1&x", proxy.base, proxy.realm);
    assert_eq!(proxy.http.get(&url).send().await.unwrap().status(), 200);
    // Absolute-form, naming another host: what goes to the OP is its own path.
    let mut raw = tokio::net::TcpStream::connect(proxy.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "GET http://elsewhere.example/realms/{}/x?y HTTP/1.1\r\nhost: elsewhere.example\r\nconnection: close\r\n\r\n",
        proxy.realm
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let realm = &proxy.realm;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!("GET /auth/realms/{realm}/account/theme.css?v=1&x HTTP/1.1"),
            format!("GET /auth/realms/{realm}/x?y HTTP/1.1"),
        ]
    );

    let (port, seen) = recording_upstream(false).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), port).await;
    let url = format!("{}/realms/{}/account/theme.css?v=1&x", proxy.base, proxy.realm);
    assert_eq!(proxy.http.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        [format!("GET /realms/{}/account/theme.css?v=1&x HTTP/1.1", proxy.realm)]
    );
}

/// An upstream that counts its connections and answers by path: `…/chunked` in two chunks,
/// `…/empty` with 204, `…/stalled` with a head and part of a body and then nothing, anything
/// else with `ok` (no body for HEAD). Returns the port, the number of connections accepted and
/// the number the proxy has closed.
async fn counting_upstream() -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (accepted_by, closed_by) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted_by.fetch_add(1, Ordering::SeqCst);
            let closed_by = closed_by.clone();
            tokio::spawn(async move {
                loop {
                    let Some(line) = read_request(&mut stream).await else {
                        closed_by.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let answer: &[u8] = if line.contains("/chunked ") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
                    } else if line.contains("/empty ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else if line.contains("/stalled ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial"
                    } else if line.starts_with("HEAD ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted, closed)
}

/// One upstream connection carries request after request, whatever the answer's framing
/// (length, chunks, none for HEAD and 204) and with request bodies; an answer the client gave
/// up halfway closes its connection, and the next request takes a new one.
#[tokio::test]
async fn upstream_connections_are_kept_alive_and_an_abandoned_answer_closes_its_own() {
    use std::sync::atomic::Ordering;
    let (port, accepted, closed) = counting_upstream().await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), port).await;
    let base = format!("{}/realms/{}/account", proxy.base, proxy.realm);
    for _ in 0..3 {
        let get = proxy.http.get(format!("{base}/theme.css")).send().await.unwrap();
        assert_eq!(get.text().await.unwrap(), "ok");
        let head = proxy.http.head(format!("{base}/theme.css")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let chunked = proxy.http.get(format!("{base}/chunked")).send().await.unwrap();
        assert_eq!(chunked.text().await.unwrap(), "hello");
        let post = proxy
            .http
            .post(format!("{base}/form"))
            .body("a=b")
            .send()
            .await
            .unwrap();
        assert_eq!(post.text().await.unwrap(), "ok");
        let empty = proxy.http.get(format!("{base}/empty")).send().await.unwrap();
        assert_eq!(empty.status(), 204);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for fifteen requests"
    );

    // A client of its own, so that dropping the answer closes the client's connection.
    let client = reqwest::Client::new();
    let stalled = client.get(format!("{base}/stalled")).send().await.unwrap();
    assert_eq!(stalled.status(), 200);
    drop(stalled);
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the abandoned answer's connection is closed"
    );
    let after = proxy.http.get(format!("{base}/theme.css")).send().await.unwrap();
    assert_eq!(after.text().await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Sends `request` on `stream` and reads the answer: its head (names lowercased) and body.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// A proxy in front of an upstream that answers `answer` to everything, a client connection
/// to the proxy, and a GET of a pass-through path to send on it.
async fn proxy_answering(answer: &'static [u8]) -> (Proxy, tokio::net::TcpStream, String) {
    let (port, _) = answering_upstream(false, answer).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), port).await;
    let client = connect_to(&proxy).await;
    let get = format!(
        "GET /realms/{}/account/theme.css HTTP/1.1\r\nhost: a\r\n\r\n",
        proxy.realm
    );
    (proxy, client, get)
}

async fn connect_to(proxy: &Proxy) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(proxy.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// The OP's hop-by-hop headers stay on its hop: its `Connection` options (the usual bare
/// `keep-alive` too), a `Keep-Alive` timeout and a header that `Connection` names never reach a
/// client, whose connection is the proxy's to keep or close.
#[tokio::test]
async fn the_ops_connection_options_never_reach_the_client() {
    // The bare option, to a client that keeps its connection: its connection works on.
    let (proxy, mut client, get) =
        proxy_answering(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok").await;
    for _ in 0..2 {
        let (head, body) = exchange(&mut client, &get).await;
        assert_eq!(body, "ok");
        assert!(!head.contains("connection:"), "{head}");
    }
    // A client that asks to close: `close` only.
    let (head, _) = exchange(&mut client, &get.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")).await;
    let options: Vec<&str> = head.lines().filter_map(|l| l.strip_prefix("connection:")).collect();
    assert_eq!(options, [" close"], "{head}");
    // HTTP/1.0 without keep-alive: nothing of the OP's.
    let mut old = connect_to(&proxy).await;
    let (head, body) = exchange(&mut old, &get.replace("HTTP/1.1", "HTTP/1.0")).await;
    assert_eq!(body, "ok");
    assert!(!head.contains("keep-alive"), "{head}");

    // More than the bare option: all of it stays on the OP's hop.
    let (_proxy, mut client, get) = proxy_answering(
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-op-secret\r\nkeep-alive: timeout=5\r\nx-op-secret: 1\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    for _ in 0..2 {
        let (head, body) = exchange(&mut client, &get).await;
        assert_eq!(body, "ok");
        for gone in ["connection:", "keep-alive:", "x-op-secret:"] {
            assert!(!head.contains(gone), "{gone} in {head}");
        }
    }
}
