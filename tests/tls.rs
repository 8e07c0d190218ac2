//! TLS over real sockets, with certificates the test makes itself (rcgen): the public port by
//! ALPN (HTTP/1.1 and HTTP/2), a certificate rotated on disk and picked up without a restart
//! (and a broken one refused), client certificates on the admin port, deferred processes bound
//! to the RP's client certificate on the public port (RFC 8705), the OP behind TLS with a
//! private CA, a redis-server that requires TLS client certificates and a password, the same
//! through a Sentinel, a Redis Cluster that speaks only TLS and requires them, and a trace
//! receiver that requires them.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::faults::{RedisServer, ScratchDir};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A test CA and the certificates it signs.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
struct Pair {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self, name: &str) -> Pair {
        self.leaf(name, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    fn client(&self, name: &str) -> Pair {
        self.leaf(name, &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A certificate for a server that is also a client (a Redis replica, a Sentinel).
    fn peer(&self, name: &str) -> Pair {
        self.leaf(
            name,
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn leaf(&self, name: &str, usages: &[ExtendedKeyUsagePurpose]) -> Pair {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        roots
    }
}

/// The CA of the proxy's own certificates, one per test binary: the shared test clients (the
/// RP's browser among them) trust it.
fn proxy_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let pki = Pki::new("dtr test CA");
        let _ = EXTRA_ROOT_CA.set(pki.ca_pem.clone());
        pki
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(pki: &Pki, identity: Option<&Pair>, alpn: &[&str]) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots());
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(
                chain(&pair.cert),
                PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).expect("key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM chain")
}

/// An HTTP client that trusts the test CA and offers `alpn`.
fn https_client(pki: &Pki, identity: Option<&Pair>, alpn: &[&str]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(pki, identity, alpn))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The certificate a TLS handshake with `port` presents.
async fn presented_certificate(pki: &Pki, port: u16) -> CertificateDer<'static> {
    let connector = TlsConnector::from(Arc::new(client_config(pki, None, &["http/1.1"])));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let server = ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector.connect(server, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

/// Cert and key files laid out as a Kubernetes Secret volume lays them out: `tls.crt` and
/// `tls.key` point through `..data`, a symlink to the current version's directory, and a
/// rotation swaps that one symlink.
struct SecretVolume {
    dir: ScratchDir,
    version: u32,
}

impl SecretVolume {
    fn new(pair: &Pair) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: ScratchDir::new("secret"),
            version: 0,
        };
        volume.rotate(&pair.cert, &pair.key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.path(name)).expect("symlink");
        }
        volume
    }

    fn rotate(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path(&version)).expect("version dir");
        std::fs::write(self.dir.0.join(&version).join("tls.crt"), cert).expect("cert");
        std::fs::write(self.dir.0.join(&version).join("tls.key"), key).expect("key");
        let staged = self.dir.path("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).expect("symlink");
        std::fs::rename(&staged, self.dir.path("..data")).expect("swap");
    }

    fn cert(&self) -> String {
        self.dir.path("tls.crt")
    }

    fn key(&self) -> String {
        self.dir.path("tls.key")
    }
}

/// A file in `dir` holding `contents`; its path.
fn file(dir: &ScratchDir, name: &str, contents: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// Gives the file at `path` new contents whole, by renaming a file written beside it, as a
/// mounted Secret or ConfigMap changes: a reload never reads it half-written (one that did
/// would be counted as a reload of its own).
fn replace_file(path: &str, contents: &str) {
    let staged = format!("{path}.new");
    std::fs::write(&staged, contents).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// How long a changed file may take to be in use. The proxies here look every second; the
/// margin is for a machine busy with other tests, and a pass takes the first second or two.
const PICKUP: Duration = Duration::from_secs(30);

/// Starts a proxy whose public port speaks TLS (its public URL https), in a fresh realm;
/// `env` adds settings.
async fn start_tls(volume: &SecretVolume, env: Vec<(String, String)>, http: reqwest::Client) -> Proxy {
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = public.local_addr().expect("addr").port();
    let base = format!("https://127.0.0.1:{port}");
    let realm = unique("r");
    let issuer = create_realm(&realm, &base).await;
    let mut vars = base_env(port, op().port);
    vars.push(("DTR_PUBLIC_URL".into(), base.clone()));
    vars.push(("DTR_ALLOW_INSECURE_HTTP".into(), "false".into()));
    vars.push(("DTR_TLS_CERT_FILE".into(), volume.cert()));
    vars.push(("DTR_TLS_KEY_FILE".into(), volume.key()));
    vars.push((
        "DTR_CLIENTS".into(),
        Value::from(Options::new(StoreKind::Embedded).clients).to_string(),
    ));
    // A setting in `env` replaces the one above.
    vars.retain(|(name, _)| !env.iter().any(|(set, _)| set == name));
    vars.extend(env);
    let config = dtr_proxy::Config::from_env(vars).unwrap_or_else(|e| panic!("{e}"));
    let running = dtr_proxy::start_on(config, public, admin).await.expect("proxy start");
    let admin = format!("http://{}", running.admin_addr);
    Proxy {
        running: Some(running),
        base,
        admin,
        realm,
        issuer,
        http,
    }
}

/// The whole deferred flow through `proxy`: acknowledgment, exchange (the OP's token endpoint
/// on the back channel), completion, and the poll that releases fresh tokens (the back channel
/// again).
async fn deferred_flow(proxy: &Proxy) {
    let user = unique("tls-user");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let pending = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert!(tokens.json["access_token"].is_string(), "{}", tokens.json);
}

/// Waits until the proxy counted one reload of `listener`'s files with `result`, failing with
/// `what` after 10 s.
async fn reloaded(proxy: &Proxy, listener: &str, result: &str, what: &str) {
    let line = format!("dtr_tls_reloads_total{{listener=\"{listener}\",result=\"{result}\"}}");
    let deadline = Instant::now() + PICKUP;
    while metric(proxy, &line).await != Some(1.0) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status of the realm's JWKS through the proxy: a pass-through request.
async fn jwks_status(proxy: &Proxy) -> u16 {
    let response = proxy
        .http
        .get(proxy.url("/protocol/openid-connect/certs"))
        .send()
        .await
        .expect("answer");
    response.status().as_u16()
}

async fn metric(proxy: &Proxy, line: &str) -> Option<f64> {
    proxy
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_port_speaks_http1_and_http2_by_alpn() {
    let pki = proxy_pki();
    let volume = SecretVolume::new(&pki.server("proxy"));
    let proxy = start_tls(&volume, Vec::new(), https_client(pki, None, &["h2"])).await;
    let discovery = format!("{}/realms/{}/.well-known/openid-configuration", proxy.base, proxy.realm);

    for (alpn, version) in [
        ("http/1.1", reqwest::Version::HTTP_11),
        ("h2", reqwest::Version::HTTP_2),
    ] {
        let client = https_client(pki, None, &[alpn]);
        let response = client.get(&discovery).send().await.expect("discovery over TLS");
        assert_eq!(response.version(), version, "{alpn}");
        assert_eq!(response.status(), 200, "{alpn}");
        let document: Value = response.json().await.expect("json");
        assert_eq!(document["issuer"], proxy.issuer.as_str(), "{alpn}");
        assert!(
            document["token_endpoint"]
                .as_str()
                .unwrap_or_default()
                .starts_with("https://"),
            "{document}"
        );
    }

    // Plain HTTP to the TLS port gets no answer.
    let plain = client().get(discovery.replace("https://", "http://")).send().await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS port: {plain:?}");

    // The whole DTR flow over HTTP/2 and TLS.
    deferred_flow(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let pki = proxy_pki();
    let first = pki.server("first");
    let mut volume = SecretVolume::new(&first);
    let env = vec![("DTR_TLS_RELOAD_INTERVAL".to_owned(), "1".to_owned())];
    let proxy = start_tls(&volume, env, https_client(pki, None, &["h2"])).await;
    let port: u16 = proxy
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(presented_certificate(pki, port).await, chain(&first.cert)[0]);

    // cert-manager renews: the Secret volume swaps its symlink to the new pair.
    let second = pki.server("second");
    volume.rotate(&second.cert, &second.key);
    let deadline = Instant::now() + PICKUP;
    while presented_certificate(pki, port).await != chain(&second.cert)[0] {
        assert!(Instant::now() < deadline, "the rotated certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&proxy, r#"dtr_tls_reloads_total{listener="public",result="replaced"}"#).await,
        Some(1.0)
    );
    let response = https_client(pki, None, &["h2"])
        .get(format!(
            "{}/realms/{}/.well-known/openid-configuration",
            proxy.base, proxy.realm
        ))
        .send()
        .await
        .expect("request after the rotation");
    assert_eq!(response.status(), 200);

    // A broken certificate, then a key that is not the certificate's: both are refused,
    // counted, and the second certificate stays.
    let third = pki.server("third");
    for (round, (cert, key)) in [
        ("not a certificate", third.key.as_str()),
        (third.cert.as_str(), second.key.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        volume.rotate(cert, key);
        let failed = round as f64 + 1.0;
        let deadline = Instant::now() + PICKUP;
        while metric(&proxy, r#"dtr_tls_reloads_total{listener="public",result="failed"}"#).await != Some(failed) {
            assert!(Instant::now() < deadline, "the broken pair {round} was not noticed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(presented_certificate(pki, port).await, chain(&second.cert)[0]);
    }

    // Fixed files are picked up again.
    volume.rotate(&third.cert, &third.key);
    let deadline = Instant::now() + PICKUP;
    while presented_certificate(pki, port).await != chain(&third.cert)[0] {
        assert!(Instant::now() < deadline, "the repaired certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_requires_a_client_certificate_from_its_ca() {
    let pki = proxy_pki();
    let operators = Pki::new("operators CA");
    let volume = SecretVolume::new(&pki.server("proxy"));
    let admin_volume = SecretVolume::new(&pki.server("admin"));
    let dir = ScratchDir::new("admin-ca");
    let env = vec![
        ("DTR_ADMIN_TLS_CERT_FILE".to_owned(), admin_volume.cert()),
        ("DTR_ADMIN_TLS_KEY_FILE".to_owned(), admin_volume.key()),
        (
            "DTR_ADMIN_TLS_CLIENT_CA_FILE".to_owned(),
            file(&dir, "operators.pem", &operators.ca_pem),
        ),
    ];
    let mut proxy = start_tls(&volume, env, https_client(pki, None, &["h2"])).await;
    proxy.admin = proxy.admin.replace("http://", "https://");
    let health = format!("{}/healthz", proxy.admin);

    let anonymous = https_client(pki, None, &["h2", "http/1.1"]).get(&health).send().await;
    assert!(
        anonymous.is_err(),
        "answered without a client certificate: {anonymous:?}"
    );
    let stranger = pki.client("stranger");
    let foreign = https_client(pki, Some(&stranger), &["h2", "http/1.1"])
        .get(&health)
        .send()
        .await;
    assert!(foreign.is_err(), "answered a certificate of another CA: {foreign:?}");

    let operator = operators.client("operator");
    proxy.http = https_client(pki, Some(&operator), &["h2", "http/1.1"]);
    let response = proxy.http.get(&health).send().await.expect("health over mTLS");
    assert_eq!(response.status(), 200);
    // The completion webhook goes through the same port.
    deferred_flow(&proxy).await;
}

/// The RPs' CA bundle is read again when it changes: an RP whose CA joins the bundle is
/// accepted from the next handshake, without a restart, and a broken bundle leaves the CAs
/// read last in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rps_ca_bundle_is_read_again_when_it_changes() {
    let pki = proxy_pki();
    let (first, second) = (Pki::new("RP CA 1"), Pki::new("RP CA 2"));
    let volume = SecretVolume::new(&pki.server("proxy"));
    let dir = ScratchDir::new("rp-ca-rotation");
    let bundle = file(&dir, "rps.pem", &first.ca_pem);
    let env = vec![
        ("DTR_TLS_CLIENT_CA_FILE".to_owned(), bundle.clone()),
        ("DTR_TLS_RELOAD_INTERVAL".to_owned(), "1".to_owned()),
    ];
    let proxy = start_tls(&volume, env, https_client(pki, None, &["h2"])).await;
    let discovery = proxy.url("/.well-known/openid-configuration");
    // A fresh client each time: a fresh handshake.
    let status_for = |rp: Pair| {
        let (client, url) = (https_client(pki, Some(&rp), &["h2", "http/1.1"]), discovery.clone());
        async move { client.get(&url).send().await.ok().map(|r| r.status().as_u16()) }
    };
    assert_eq!(status_for(first.client("rp-1")).await, Some(200));
    assert_eq!(
        status_for(second.client("rp-2")).await,
        None,
        "a certificate of a CA outside the bundle ends the handshake"
    );

    replace_file(&bundle, &format!("{}{}", first.ca_pem, second.ca_pem));
    let deadline = Instant::now() + PICKUP;
    while status_for(second.client("rp-2")).await != Some(200) {
        assert!(Instant::now() < deadline, "the new RP's CA was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let replaced = "dtr_tls_reloads_total{listener=\"public_client_ca\",result=\"replaced\"}";
    assert_eq!(metric(&proxy, replaced).await, Some(1.0));
    assert_eq!(status_for(first.client("rp-1")).await, Some(200));

    replace_file(&bundle, "-----BEGIN CERTIFICATE-----\nbroken\n");
    reloaded(
        &proxy,
        "public_client_ca",
        "failed",
        "the broken bundle was not noticed",
    )
    .await;
    assert_eq!(status_for(second.client("rp-3")).await, Some(200));
    assert_eq!(status_for(first.client("rp-4")).await, Some(200));
}

/// The same proxy, as seen by a client with another TLS identity (`http`).
fn view(proxy: &Proxy, http: reqwest::Client) -> Proxy {
    Proxy {
        running: None,
        base: proxy.base.clone(),
        admin: proxy.admin.clone(),
        realm: proxy.realm.clone(),
        issuer: proxy.issuer.clone(),
        http,
    }
}

/// A proxy whose public port asks for client certificates from the RPs' CA: `dtr-client`
/// (OpenID profile) is registered for certificate-bound tokens, `dtr-post` speaks the IETF
/// profile and binds a process when it happens to present a certificate. With `redis`, the
/// store is that server. The files it reads live as long as the returned guard.
async fn start_mtls(rps: &Pki, redis: Option<&RedisServer>) -> (Proxy, (SecretVolume, ScratchDir)) {
    let pki = proxy_pki();
    let volume = SecretVolume::new(&pki.server("proxy"));
    let dir = ScratchDir::new("rp-ca");
    let clients = json!([
        {"client_id": "dtr-client", "redirect_uris": [REDIRECT_URI], "tls_client_certificate_bound_access_tokens": true},
        {"client_id": "dtr-post", "profile": "ietf"},
    ]);
    let mut env = vec![
        ("DTR_TLS_CLIENT_CA_FILE".to_owned(), file(&dir, "rps.pem", &rps.ca_pem)),
        ("DTR_CLIENTS".to_owned(), clients.to_string()),
    ];
    if let Some(redis) = redis {
        env.push(("DTR_REDIS_URL".to_owned(), redis.url()));
    }
    let proxy = start_tls(&volume, env, https_client(pki, None, &["h2"])).await;
    (proxy, (volume, dir))
}

/// RFC 8705 binding of an OpenID-profile process, on `store`: the exchange records the
/// certificate; polls with another certificate or none are `invalid_grant` and leave the
/// process as it was (not even its poll clock moves), a cancellation by them is a no-op, and
/// the owner's certificate still gets the tokens. With `redis` (a server of the test's own),
/// the store commands of the polls are counted too.
async fn certificate_bound_flow(redis: Option<&RedisServer>) {
    let pki = proxy_pki();
    let rps = Pki::new("RP CA");
    let (owner, other) = (rps.client("rp"), rps.client("rp-2"));
    let (proxy, _files) = start_mtls(&rps, redis).await;
    let with_cert = view(&proxy, https_client(pki, Some(&owner), &["h2", "http/1.1"]));
    let with_other = view(&proxy, https_client(pki, Some(&other), &["h2", "http/1.1"]));
    let without = view(&proxy, https_client(pki, None, &["h2", "http/1.1"]));

    // The browser presents no certificate and still logs in through the same port.
    let user = unique("mtls-user");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;
    // The client is registered for certificate-bound tokens: no certificate, no exchange,
    // and the code is not spent by the refusal.
    let refused = without.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(refused.status, 400, "{}", refused.json);
    assert_eq!(refused.error(), "invalid_request", "{}", refused.json);
    let exchanged = with_cert.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.json);
    let id = exchanged.json["deferred_auth_id"].as_str().expect("id").to_owned();

    for (who, client) in [("another certificate", &with_other), ("no certificate", &without)] {
        let before = redis.map(command_calls);
        let refused = client.poll(&dtr_client(), &id).await;
        assert_eq!(refused.status, 400, "{who}: {}", refused.json);
        assert_eq!(refused.error(), "invalid_grant", "{who}: {}", refused.json);
        if let (Some(redis), Some(before)) = (redis, before) {
            // The read and the stamp, then the stamp taken back (the read found another
            // certificate in the guard): the clock is as it was. The first such poll on a
            // fresh server loads the script and sends it again.
            let used = calls_since(redis, &before);
            let sent = 1 + used.get("script|load").copied().unwrap_or(0);
            assert_eq!(
                (used.get("get"), used.get("bitfield")),
                (Some(&1), Some(&1)),
                "{who}: {used:?}"
            );
            assert_eq!(used.get("evalsha"), Some(&sent), "{who}: {used:?}");
            assert_eq!(used.get("setrange"), Some(&1), "{who}: {used:?}");
        }
        let cancel = client.cancel(&dtr_client(), &id).await;
        assert_eq!(cancel.status, 200, "{who}: {}", cancel.json);
    }
    // Neither the refused polls nor the cancellations touched it: pending, no slow_down.
    let before = redis.map(command_calls);
    let pending = with_cert.poll(&dtr_client(), &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    if let (Some(redis), Some(before)) = (redis, before) {
        // The owner's pending poll is still one round trip: the read and the stamp
        // (`BITFIELD`), no script, no second command to stamp it.
        let used = calls_since(redis, &before);
        assert_eq!(
            (
                used.get("get"),
                used.get("bitfield"),
                used.get("evalsha"),
                used.get("setrange"),
            ),
            (Some(&1), Some(&1), None, None),
            "{used:?}"
        );
    }
    let process = proxy.process(&proxy_process_id(&proxy, &user).await).await;
    assert_eq!(process["status"], "pending", "{process}");

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for client in [&with_other, &without] {
        let refused = client.poll(&dtr_client(), &id).await;
        assert_eq!(refused.error(), "invalid_grant", "{}", refused.json);
    }
    let tokens = with_cert.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert!(tokens.json["access_token"].is_string(), "{}", tokens.json);

    // A certificate of a CA the port does not trust ends the handshake.
    let stranger = Pki::new("stranger CA").client("rp");
    let foreign = view(&proxy, https_client(pki, Some(&stranger), &["h2", "http/1.1"]));
    let tried = foreign.http.get(&proxy.issuer).send().await;
    assert!(tried.is_err(), "answered a certificate of another CA: {tried:?}");
}

/// The public id of the (one) process of `user`, from the operator API.
async fn proxy_process_id(proxy: &Proxy, user: &str) -> String {
    let found = proxy
        .operator(reqwest::Method::GET, &format!("/processes?sub={user}"), None)
        .await;
    found.json["processes"][0]["process_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no process of {user}: {}", found.json))
        .to_owned()
}

/// Calls per command since the server started (`INFO commandstats`; a script's commands
/// count under their own names).
fn command_calls(redis: &RedisServer) -> std::collections::HashMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The commands called since `before`, with their counts (the `INFO` calls left out).
fn calls_since(
    redis: &RedisServer,
    before: &std::collections::HashMap<String, u64>,
) -> std::collections::HashMap<String, u64> {
    command_calls(redis)
        .into_iter()
        .filter(|(name, _)| name != "info")
        .filter_map(|(name, calls)| {
            let used = calls - before.get(&name).copied().unwrap_or(0);
            (used > 0).then_some((name, used))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_process_is_bound_to_the_rps_client_certificate() {
    certificate_bound_flow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_process_in_redis() {
    let redis = RedisServer::start(&[]);
    certificate_bound_flow(Some(&redis)).await;
}

/// The IETF profile: a client that presents a certificate at the exchange binds its
/// deferral code to it; a revocation without it is answered 200 and cancels nothing
/// (RFC 7009: no oracle), the revocation with it cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ietf_deferral_code_is_bound_to_the_certificate_of_its_exchange() {
    let pki = proxy_pki();
    let rps = Pki::new("RP CA");
    let (owner, other) = (rps.client("rp"), rps.client("rp-2"));
    let (proxy, _files) = start_mtls(&rps, None).await;
    let with_cert = view(&proxy, https_client(pki, Some(&owner), &["h2", "http/1.1"]));
    let with_other = view(&proxy, https_client(pki, Some(&other), &["h2", "http/1.1"]));
    let auth = Auth::Post("dtr-post", "dtr-post-secret");

    let user = unique("mtls-ietf");
    let (code, verifier) = proxy.rp(Profile::Ietf).deferred_code("dtr-post", &user).await;
    let exchanged = with_cert
        .rp(Profile::Ietf)
        .exchange(&auth, &code, &verifier, None)
        .await;
    let id = with_cert
        .rp(Profile::Ietf)
        .id_of(&exchanged)
        .unwrap_or_else(|| panic!("exchange failed: {} {}", exchanged.status, exchanged.json));

    let refused = with_other.rp(Profile::Ietf).poll(&auth, &id).await;
    assert_eq!(refused.error(), "invalid_grant", "{}", refused.json);
    let revoked = with_other.rp(Profile::Ietf).cancel(&auth, &id).await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    let pending = with_cert.rp(Profile::Ietf).poll(&auth, &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);

    let revoked = with_cert.rp(Profile::Ietf).cancel(&auth, &id).await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = with_cert.rp(Profile::Ietf).poll(&auth, &id).await;
    assert_ne!(after.error(), "authorization_pending", "{}", after.json);
    assert_ne!(after.status, 200, "{}", after.json);
}

/// An HTTP client whose every request carries `value` in `header`.
fn with_header(header: &'static str, value: String) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(header, value.parse().expect("header value"));
    client_builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `pair`'s certificate as ingress-nginx passes it on (`$ssl_client_escaped_cert`: the PEM,
/// URL-encoded).
fn escaped_pem(pair: &Pair) -> String {
    percent_encoding::utf8_percent_encode(&pair.cert, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `pair`'s certificate as an Envoy or Istio gateway passes it on in `x-forwarded-client-cert`
/// with `SANITIZE_SET`: `By` and the leaf's SHA-256 in hex always, the URL-encoded PEM when
/// configured to (`Cert`), and the subject (quoted: it holds `,` and `=`).
fn xfcc(pair: &Pair, with_cert: bool) -> String {
    let der = chain(&pair.cert).remove(0);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let cert = if with_cert {
        format!(";Cert=\"{}\"", escaped_pem(pair))
    } else {
        String::new()
    };
    format!("By=spiffe://cluster.local/ns/keycloak/sa/dtr-proxy;Hash={hash}{cert};Subject=\"CN=rp,O=RP CA\";URI=")
}

fn behind_ingress(header: &'static str, pair: &Pair) -> reqwest::Client {
    with_header(header, escaped_pem(pair))
}

/// TLS ends at the ingress, which passes the RP's certificate on: ingress-nginx in
/// `ssl-client-cert`, an Envoy or Istio gateway in `x-forwarded-client-cert` (its hash alone,
/// or with the certificate). The process is bound to it just as to a certificate of the
/// proxy's own handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_trusted_ingress_binds_the_process() {
    let rps = Pki::new("RP CA");
    let (owner, other) = (rps.client("rp"), rps.client("rp-2"));
    type Form = fn(&Pair) -> String;
    let forms: [(&str, &'static str, Form); 3] = [
        ("ingress-nginx", "ssl-client-cert", escaped_pem),
        ("Envoy, hash only", "x-forwarded-client-cert", |pair| xfcc(pair, false)),
        ("Envoy, with the certificate", "x-forwarded-client-cert", |pair| {
            xfcc(pair, true)
        }),
    ];
    for (ingress, header, form) in forms {
        let options = Options::new(StoreKind::Embedded)
            .client(json!({"client_id": "dtr-client", "redirect_uris": [REDIRECT_URI], "tls_client_certificate_bound_access_tokens": true}))
            .env("DTR_CLIENT_CERT_HEADER", header)
            .env("DTR_TRUSTED_PROXIES", "127.0.0.1/32");
        let proxy = start(options).await;
        let with_cert = view(&proxy, with_header(header, form(&owner)));
        let with_other = view(&proxy, with_header(header, form(&other)));

        let user = unique("ingress-user");
        let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;
        let refused = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
        assert_eq!(refused.error(), "invalid_request", "{ingress}: {}", refused.json);
        let exchanged = with_cert.exchange(&dtr_client(), &code, &verifier, None).await;
        assert_eq!(exchanged.status, 200, "{ingress}: {}", exchanged.json);
        let id = exchanged.json["deferred_auth_id"].as_str().expect("id").to_owned();
        for client in [&with_other, &proxy] {
            let refused = client.poll(&dtr_client(), &id).await;
            assert_eq!(refused.error(), "invalid_grant", "{ingress}: {}", refused.json);
        }
        let pending = with_cert.poll(&dtr_client(), &id).await;
        assert_eq!(pending.error(), "authorization_pending", "{ingress}: {}", pending.json);
        let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
        assert_eq!(completed.status, 200, "{ingress}: {}", completed.json);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let tokens = with_cert.poll(&dtr_client(), &id).await;
        assert_eq!(tokens.status, 200, "{ingress}: {}", tokens.json);
    }
}

/// A certificate header from anyone but the configured, trusted ingress binds nothing and
/// never reaches the OP: with the setting off, and from a peer outside DTR_TRUSTED_PROXIES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_certificate_header_is_stripped_and_binds_nothing() {
    let forger = Pki::new("forger CA").client("rp");
    let off = Options::new(StoreKind::Embedded);
    let untrusted = Options::new(StoreKind::Embedded)
        .env("DTR_CLIENT_CERT_HEADER", "ssl-client-cert")
        .env("DTR_TRUSTED_PROXIES", "10.0.0.0/8");
    for (case, options) in [("setting off", off), ("untrusted peer", untrusted)] {
        let proxy = start(options).await;
        let forged = view(&proxy, behind_ingress("ssl-client-cert", &forger));
        let (id, _) = forged.start_process(&dtr_client(), &unique("forged"), None).await;
        // Not bound: the client's own poll without any certificate is answered.
        let pending = proxy.poll(&dtr_client(), &id).await;
        assert_eq!(pending.error(), "authorization_pending", "{case}: {}", pending.json);
    }

    // What reaches the OP on pass-through: a recording upstream.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let record = seen.clone();
    let upstream = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let names = request.headers().keys().map(|k| k.as_str().to_owned()).collect();
            record.lock().expect("lock").push(names);
            empty_response(200)
        }
    })
    .await;
    let cases = [
        (Options::new(StoreKind::Embedded), None),
        (
            Options::new(StoreKind::Embedded)
                .env("DTR_CLIENT_CERT_HEADER", "ssl-client-cert")
                .env("DTR_TRUSTED_PROXIES", "10.0.0.0/8"),
            None,
        ),
        (
            Options::new(StoreKind::Embedded)
                .env("DTR_CLIENT_CERT_HEADER", "ssl-client-cert")
                .env("DTR_TRUSTED_PROXIES", "127.0.0.1/32"),
            Some("ssl-client-cert"),
        ),
    ];
    for (options, expected) in cases {
        let proxy = start_with_upstream(options, upstream.port()).await;
        let sent = behind_ingress("ssl-client-cert", &forger)
            .get(proxy.url("/account"))
            .header("x-forwarded-client-cert", "Hash=forged")
            .header("client-cert", ":AAAA:")
            .send()
            .await
            .expect("pass-through");
        assert_eq!(sent.status(), 200);
        let names = seen.lock().expect("lock").pop().expect("the upstream saw the request");
        let certificate_headers: Vec<&String> = names
            .iter()
            .filter(|n| ["ssl-client-cert", "x-forwarded-client-cert", "client-cert"].contains(&n.as_str()))
            .collect();
        assert_eq!(
            certificate_headers,
            expected.map(str::to_owned).iter().collect::<Vec<_>>(),
            "{names:?}"
        );
    }
}

/// A TLS terminator in front of the stand-in OP: what an OP with a certificate from a private
/// CA looks like to the proxy.
async fn tls_relay(pair: &Pair, target: u16) -> u16 {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            chain(&pair.cert),
            PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut op) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut op).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_op_is_reached_over_tls_with_a_private_ca() {
    let pki = &Pki::new("OP CA");
    let relay = tls_relay(&pki.server("op"), op().port).await;
    let dir = ScratchDir::new("op-ca");
    let ca = file(&dir, "op-ca.pem", &pki.ca_pem);
    let upstream = format!("https://127.0.0.1:{relay}");

    for only in ["false", "true"] {
        let proxy = start(
            Options::new(StoreKind::Embedded)
                .env("DTR_UPSTREAM_URL", upstream.clone())
                .env("DTR_UPSTREAM_CA_FILE", ca.clone())
                .env("DTR_UPSTREAM_CA_ONLY", only),
        )
        .await;
        // Pass-through.
        let jwks = proxy
            .http
            .get(proxy.url("/protocol/openid-connect/certs"))
            .send()
            .await
            .expect("jwks");
        assert_eq!(jwks.status(), 200, "only={only}");
        let keys: Value = jwks.json().await.expect("json");
        assert!(keys["keys"].as_array().is_some_and(|k| !k.is_empty()), "{keys}");
        // The back channel: the code exchange and the final refresh.
        deferred_flow(&proxy).await;
    }

    // Without the CA the OP's certificate is not trusted: the pass-through fails as a gateway.
    let untrusting = start(Options::new(StoreKind::Embedded).env("DTR_UPSTREAM_URL", upstream.clone())).await;
    let refused = untrusting
        .http
        .get(untrusting.url("/protocol/openid-connect/certs"))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 502);
}

/// The OP's CA file is read again when it changes: a bundle that gains the CA the OP's new
/// certificate comes from (trust-manager, cert-manager's CA issuer) is trusted without a
/// restart, and a broken one leaves the current CAs in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_ca_file_is_read_again_when_it_changes() {
    let (old, new) = (&Pki::new("OP CA 1"), &Pki::new("OP CA 2"));
    let relay = tls_relay(&new.server("op"), op().port).await;
    let dir = ScratchDir::new("op-ca-rotation");
    let ca = file(&dir, "op-ca.pem", &old.ca_pem);
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_UPSTREAM_URL", format!("https://127.0.0.1:{relay}"))
            .env("DTR_UPSTREAM_CA_FILE", ca.clone())
            .env("DTR_UPSTREAM_CA_ONLY", "true")
            .env("DTR_TLS_RELOAD_INTERVAL", "1"),
    )
    .await;
    assert_eq!(jwks_status(&proxy).await, 502, "the new CA is not trusted yet");

    // The bundle gains the new CA; the old one stays for a while, as in a rotation.
    replace_file(&ca, &format!("{}{}", old.ca_pem, new.ca_pem));
    let deadline = Instant::now() + PICKUP;
    while jwks_status(&proxy).await != 200 {
        assert!(Instant::now() < deadline, "the new CA was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let replaced = "dtr_tls_reloads_total{listener=\"upstream\",result=\"replaced\"}";
    assert_eq!(metric(&proxy, replaced).await, Some(1.0));
    deferred_flow(&proxy).await;

    // A broken bundle is refused; the CAs read last stay.
    replace_file(&ca, "-----BEGIN CERTIFICATE-----\nbroken\n");
    reloaded(&proxy, "upstream", "failed", "the broken bundle was not noticed").await;
    assert_eq!(jwks_status(&proxy).await, 200);
}

/// The settings of a redis-server that speaks only TLS, on `port`, with the certificate files
/// `redis.crt`, `redis.key` and `ca.crt` of `dir`, and requires client certificates.
fn tls_only(port: u16, dir: &ScratchDir) -> Vec<String> {
    let port = port.to_string();
    let (cert, key, ca) = (dir.path("redis.crt"), dir.path("redis.key"), dir.path("ca.crt"));
    let settings = [
        "--port",
        "0",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
    ];
    settings.iter().map(|s| s.to_string()).collect()
}

/// Writes a Redis node's certificate (a peer of `pki`: the nodes of a cluster and replicas
/// present it as clients too) and `pki`'s CA into `dir`, as [`tls_only`] reads them.
fn redis_certificates(pki: &Pki, dir: &ScratchDir) {
    let node = pki.peer("redis");
    file(dir, "redis.crt", &node.cert);
    file(dir, "redis.key", &node.key);
    file(dir, "ca.crt", &pki.ca_pem);
}

/// A redis-server that speaks only TLS, requires client certificates of `pki` and the user
/// `dtr` with `password` (the default user is off).
fn tls_redis(pki: &Pki, dir: &ScratchDir, password: &str) -> RedisServer {
    redis_certificates(pki, dir);
    RedisServer::start_with(|port| {
        let mut settings = tls_only(port, dir);
        let users = [
            "--user",
            "default",
            "off",
            "--user",
            "dtr",
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ];
        settings.extend(users.iter().map(|s| s.to_string()));
        settings
    })
}

/// Writes `client`'s certificate and key where [`presenting`] put the proxy's: a renewal.
fn present(dir: &ScratchDir, client: &Pair) {
    file(dir, "client.crt", &client.cert);
    file(dir, "client.key", &client.key);
}

/// `options` with the proxy presenting `client`'s certificate to Redis, written into `dir`.
fn presenting(options: Options, client: Option<&Pair>, dir: &ScratchDir) -> Options {
    match client {
        Some(client) => options
            .env("DTR_REDIS_CLIENT_CERT_FILE", file(dir, "client.crt", &client.cert))
            .env("DTR_REDIS_CLIENT_KEY_FILE", file(dir, "client.key", &client.key)),
        None => options,
    }
}

async fn store_state(proxy: &Proxy) -> String {
    let ready: Value = proxy
        .http
        .get(format!("{}/readyz", proxy.admin))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    ready["store"].as_str().unwrap_or_default().to_owned()
}

/// Waits until the proxy's store is up, failing with `what` after 15 s.
async fn store_up(proxy: &Proxy, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while store_state(proxy).await != "up" {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_client_certificate_and_a_password_file() {
    let pki = &Pki::new("Redis CA");
    let dir = ScratchDir::new("redis-tls");
    let password = "s3cret-Pass";
    let redis = tls_redis(pki, &dir, password);
    let client = pki.client("dtr-proxy");
    let settings = |with_certificate: bool, password: &str| {
        let options = Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", format!("rediss://127.0.0.1:{}", redis.port))
            .env("DTR_REDIS_KEY_PREFIX", unique("tls"))
            .env("DTR_REDIS_CA_FILE", dir.path("ca.crt"))
            .env("DTR_REDIS_USERNAME", "dtr")
            // As a Secret key mounted as a file: with the newline an editor leaves.
            .env(
                "DTR_REDIS_PASSWORD_FILE",
                file(&dir, &unique("password"), &format!("{password}\n")),
            );
        presenting(options, with_certificate.then_some(&client), &dir)
    };

    let proxy = start(settings(true, password)).await;
    assert_eq!(store_state(&proxy).await, "up");
    deferred_flow(&proxy).await;

    // Without the client certificate, or with the wrong password, Redis refuses the proxy.
    for (with_certificate, password) in [(false, password), (true, "wrong")] {
        let refused = start(settings(with_certificate, password)).await;
        assert_ne!(
            store_state(&refused).await,
            "up",
            "certificate={with_certificate} password={password}"
        );
    }
}

/// The proxy's Redis client certificate is read again when it changes (cert-manager renews
/// it): the connection open stays, and the next one presents the new certificate. Here Redis
/// stops accepting the old certificate's CA and drops its clients; the proxy reconnects with
/// the renewed certificate, while a proxy whose files did not change cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_redis_client_certificate_is_used_from_the_next_connection() {
    let (old, new) = (&Pki::new("Redis clients 1"), &Pki::new("Redis clients 2"));
    let server = &Pki::new("Redis CA");
    let dir = ScratchDir::new("redis-renewal");
    redis_certificates(server, &dir);
    // Redis verifies clients against the first clients' CA, then against the second's only.
    let (old_cas, new_cas) = (
        file(&dir, "old-clients.crt", &old.ca_pem),
        file(&dir, "new-clients.crt", &new.ca_pem),
    );
    let redis = RedisServer::start_with(|port| {
        let mut settings = tls_only(port, &dir);
        settings.extend(["--tls-ca-cert-file".to_owned(), old_cas.clone()]);
        settings
    });
    let admin = |pki: &Pki, name: &str| {
        let pair = pki.client(name);
        (
            file(&dir, &format!("{name}.crt"), &pair.cert),
            file(&dir, &format!("{name}.key"), &pair.key),
        )
    };
    let cli = |(cert, key): &(String, String), args: &[&str]| {
        let port = redis.port.to_string();
        let tls = [
            "--tls",
            "--cacert",
            &dir.path("ca.crt"),
            "--cert",
            cert,
            "--key",
            key,
            "-p",
            &port,
        ];
        let out = std::process::Command::new("redis-cli")
            .args(tls)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (old_admin, new_admin) = (admin(old, "admin-1"), admin(new, "admin-2"));

    let proxy_with = |files: &ScratchDir, client: &Pair| {
        let options = Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", format!("rediss://127.0.0.1:{}", redis.port))
            .env("DTR_REDIS_KEY_PREFIX", unique("renewal"))
            .env("DTR_REDIS_CA_FILE", dir.path("ca.crt"))
            .env("DTR_TLS_RELOAD_INTERVAL", "1");
        presenting(options, Some(client), files)
    };
    let renewing = ScratchDir::new("renewing");
    let proxy = start(proxy_with(&renewing, &old.client("dtr-proxy"))).await;
    let unchanged = ScratchDir::new("unchanged");
    let stale = start(proxy_with(&unchanged, &old.client("dtr-proxy"))).await;
    for proxy in [&proxy, &stale] {
        deferred_flow(proxy).await;
    }

    // The renewal: the new certificate and key land in the files.
    let renewed = new.client("dtr-proxy");
    present(&renewing, &renewed);
    reloaded(&proxy, "redis", "replaced", "the renewed certificate was not read").await;
    // The connection open before the renewal still serves.
    deferred_flow(&proxy).await;

    // Redis trusts only the new clients' CA from now on, and drops every client.
    assert_eq!(
        cli(&old_admin, &["CONFIG", "SET", "tls-ca-cert-file", &new_cas]).trim(),
        "OK"
    );
    let killed = cli(&new_admin, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 2), "{killed}");
    store_up(&proxy, "no reconnect with the renewed certificate").await;
    deferred_flow(&proxy).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(store_state(&stale).await, "up", "the old certificate is refused now");

    // A renewal that does not make a pair is refused; the certificate read last stays.
    file(&renewing, "client.key", "-----BEGIN PRIVATE KEY-----\nbroken\n");
    reloaded(&proxy, "redis", "failed", "the broken key was not noticed").await;
    cli(&new_admin, &["CLIENT", "KILL", "TYPE", "normal"]);
    store_up(&proxy, "no reconnect with the certificate read last").await;
    deferred_flow(&proxy).await;
}

/// The master found through a Sentinel that requires client certificates too, both over TLS;
/// without a certificate neither lets the proxy in. A renewed client certificate is presented
/// from the next connection to the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_a_tls_sentinel_with_client_certificates() {
    let pki = &Pki::new("Redis CA");
    // The proxy's certificates come from CAs of their own, so the master's trust can move
    // from the first to the second while the Sentinel's certificate (of `pki`) stays trusted.
    let (old, new) = (&Pki::new("Redis clients 1"), &Pki::new("Redis clients 2"));
    let dir = ScratchDir::new("sentinel-tls");
    let password = "s3ntinel-Pass";
    let master = tls_redis(pki, &dir, password);
    let trusted = |clients: &[&Pki], name: &str| {
        let bundle: String = clients.iter().map(|c| c.ca_pem.as_str()).collect();
        file(&dir, name, &format!("{}{bundle}", pki.ca_pem))
    };
    let admin = pki.client("admin");
    let (admin_cert, admin_key) = (
        file(&dir, "admin.crt", &admin.cert),
        file(&dir, "admin.key", &admin.key),
    );
    let master_cli = |args: &[&str]| {
        let port = master.port.to_string();
        let tls = [
            "--tls",
            "--cacert",
            &dir.path("ca.crt"),
            "--cert",
            &admin_cert,
            "--key",
            &admin_key,
            "-p",
            &port,
            "--user",
            "dtr",
            "--pass",
            password,
            "--no-auth-warning",
        ];
        let out = std::process::Command::new("redis-cli")
            .args(tls)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let set_trust = |bundle: &str| assert_eq!(master_cli(&["CONFIG", "SET", "tls-ca-cert-file", bundle]), "OK");
    set_trust(&trusted(&[old], "master-trusts-1.crt"));
    // The Sentinel (and the proxies, for the servers' certificates) trust every CA here.
    let ca = trusted(&[old, new], "ca.crt");
    // The Sentinel requires client certificates too, and logs in to the master as dtr.
    let (cert, key) = (dir.path("redis.crt"), dir.path("redis.key"));
    let sentinel = RedisServer::sentinel_with("tls-master", master.port, |port| {
        vec![
            "port 0".into(),
            format!("tls-port {port}"),
            format!("tls-cert-file {cert}"),
            format!("tls-key-file {key}"),
            format!("tls-ca-cert-file {ca}"),
            "tls-auth-clients yes".into(),
            "tls-replication yes".into(),
            "sentinel auth-user tls-master dtr".into(),
            format!("sentinel auth-pass tls-master {password}"),
        ]
    });
    let client = old.client("dtr-proxy");
    let options = |files: &ScratchDir, client: Option<&Pair>| {
        let options = Options::new(StoreKind::Embedded)
            .env(
                "DTR_REDIS_URL",
                format!("rediss+sentinel://127.0.0.1:{}/tls-master", sentinel.port),
            )
            .env("DTR_REDIS_KEY_PREFIX", unique("tls"))
            .env("DTR_REDIS_CA_FILE", ca.clone())
            .env("DTR_REDIS_USERNAME", "dtr")
            .env("DTR_REDIS_PASSWORD_FILE", file(&dir, "password", password))
            .env("DTR_TLS_RELOAD_INTERVAL", "1");
        presenting(options, client, files)
    };
    let renewing = ScratchDir::new("sentinel-renewing");
    let proxy = start(options(&renewing, Some(&client))).await;
    store_up(&proxy, "the master through the TLS Sentinel").await;
    deferred_flow(&proxy).await;
    let unchanged = ScratchDir::new("sentinel-unchanged");
    let stale = start(options(&unchanged, Some(&client))).await;
    store_up(&stale, "the master through the TLS Sentinel, twice").await;

    let refused = start(options(&ScratchDir::new("sentinel-none"), None)).await;
    assert_ne!(store_state(&refused).await, "up", "no client certificate, yet served");

    // The renewal, from a new CA: the master trusts both while it lands.
    set_trust(&trusted(&[old, new], "master-trusts-both.crt"));
    let renewed = new.client("dtr-proxy");
    present(&renewing, &renewed);
    reloaded(&proxy, "redis", "replaced", "the renewed certificate was not read").await;
    deferred_flow(&proxy).await;

    // The master trusts only the new clients' CA from now on, and drops every client: the
    // renewed proxy finds it again through the Sentinel and gets in, the other does not.
    set_trust(&trusted(&[new], "master-trusts-2.crt"));
    master_cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    store_up(&proxy, "no reconnect with the renewed certificate").await;
    deferred_flow(&proxy).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(store_state(&stale).await, "up", "the old certificate is refused now");
}

#[test]
fn wrong_tls_files_are_reported_at_startup() {
    let pki = proxy_pki();
    let dir = ScratchDir::new("tls-config");
    let one = pki.server("one");
    let other = pki.server("other");
    let (cert, key, other_key) = (
        file(&dir, "one.crt", &one.cert),
        file(&dir, "one.key", &one.key),
        file(&dir, "other.key", &other.key),
    );
    let garbage = file(&dir, "garbage", "not PEM");
    let errors = |extra: &[(&str, &str)]| -> String {
        let mut vars = base_env(8443, 8080);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        match dtr_proxy::Config::from_env(vars) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(errors(&[("DTR_TLS_CERT_FILE", &cert), ("DTR_TLS_KEY_FILE", &key)]), "");
    for (settings, expected) in [
        (
            vec![("DTR_TLS_CERT_FILE", cert.as_str())],
            "DTR_TLS_CERT_FILE and DTR_TLS_KEY_FILE go together",
        ),
        (
            vec![("DTR_TLS_CERT_FILE", &cert), ("DTR_TLS_KEY_FILE", &other_key)],
            "DTR_TLS_KEY_FILE:",
        ),
        (
            vec![("DTR_TLS_CERT_FILE", &garbage), ("DTR_TLS_KEY_FILE", &key)],
            "DTR_TLS_CERT_FILE:",
        ),
        (
            vec![
                ("DTR_ADMIN_TLS_CERT_FILE", &cert),
                ("DTR_ADMIN_TLS_KEY_FILE", "/nonexistent/key"),
            ],
            "DTR_ADMIN_TLS_KEY_FILE: cannot read",
        ),
        (
            vec![("DTR_ADMIN_TLS_CLIENT_CA_FILE", cert.as_str())],
            "DTR_ADMIN_TLS_CLIENT_CA_FILE: needs",
        ),
        (vec![("DTR_TLS_RELOAD_INTERVAL", "0")], "DTR_TLS_RELOAD_INTERVAL"),
        (
            vec![("DTR_UPSTREAM_CA_FILE", garbage.as_str())],
            "DTR_UPSTREAM_CA_FILE:",
        ),
        (
            vec![("DTR_UPSTREAM_CA_FILE", cert.as_str())],
            "DTR_UPSTREAM_CA_FILE: only for an https DTR_UPSTREAM_URL",
        ),
        (vec![("DTR_UPSTREAM_CA_ONLY", "true")], "DTR_UPSTREAM_CA_ONLY: needs"),
        (
            vec![
                ("DTR_EVENTS_URL", "https://verifier.example.com/events"),
                ("DTR_EVENTS_SECRET", WEBHOOK_SECRET),
                ("DTR_EVENTS_CA_FILE", garbage.as_str()),
            ],
            "DTR_EVENTS_CA_FILE:",
        ),
        (
            vec![
                ("DTR_EVENTS_URL", "http://verifier.example.com/events"),
                ("DTR_EVENTS_SECRET", WEBHOOK_SECRET),
                ("DTR_EVENTS_CA_FILE", cert.as_str()),
            ],
            "DTR_EVENTS_CA_FILE: only for an https DTR_EVENTS_URL",
        ),
        (vec![("DTR_EVENTS_CA_FILE", cert.as_str())], "DTR_EVENTS_CA_FILE: needs"),
        (vec![("DTR_RP_CA_FILE", garbage.as_str())], "DTR_RP_CA_FILE:"),
        (
            vec![
                ("DTR_REDIS_URL", "rediss://127.0.0.1:6380"),
                ("DTR_REDIS_CLIENT_CERT_FILE", &cert),
                ("DTR_REDIS_CLIENT_KEY_FILE", &other_key),
            ],
            "DTR_REDIS_CLIENT_KEY_FILE:",
        ),
        (
            vec![
                ("DTR_REDIS_URL", "redis://127.0.0.1:6379"),
                ("DTR_REDIS_CLIENT_CERT_FILE", &cert),
                ("DTR_REDIS_CLIENT_KEY_FILE", &key),
            ],
            "DTR_REDIS_CLIENT_CERT_FILE: only for a rediss://",
        ),
        (
            vec![
                ("DTR_REDIS_URL", "redis://127.0.0.1:6379"),
                ("DTR_REDIS_PASSWORD", "a"),
                ("DTR_REDIS_PASSWORD_FILE", &key),
            ],
            "set one of them",
        ),
        (
            vec![
                ("DTR_REDIS_URL", "redis://127.0.0.1:6379"),
                ("DTR_REDIS_PASSWORD_FILE", "/nonexistent/password"),
            ],
            "DTR_REDIS_PASSWORD_FILE: cannot read",
        ),
    ] {
        let found = errors(&settings);
        assert!(
            found.contains(expected),
            "{settings:?}: expected {expected:?} in {found:?}"
        );
    }
}

/// A Redis Cluster that speaks only TLS, to its clients and on its bus, and requires client
/// certificates (as the Bitnami redis-cluster chart runs with TLS on): the proxy finds the
/// nodes from one seed and presents its certificate to each. Without it, no node lets it in.
/// A renewed client certificate is read again and presented to every node from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_with_client_certificates() {
    let pki = &Pki::new("Redis CA");
    // The proxy's certificates come from CAs of their own: the nodes' trust can move from the
    // first to the second while their own certificates (the bus) stay trusted.
    let (old, new) = (&Pki::new("Redis clients 1"), &Pki::new("Redis clients 2"));
    let dir = ScratchDir::new("cluster-tls");
    redis_certificates(pki, &dir);
    let ca = file(&dir, "server-ca.crt", &pki.ca_pem);
    let trusted = |clients: &[&Pki], name: &str| {
        let bundle: String = clients.iter().map(|c| c.ca_pem.as_str()).collect();
        file(&dir, name, &format!("{}{bundle}", pki.ca_pem))
    };
    // What the nodes read as `ca.crt` (tls_only): their own CA and the first clients' CA.
    trusted(&[old], "ca.crt");
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            let bus = common::free_port();
            RedisServer::start_with(|port| {
                let mut settings = tls_only(port, &dir);
                settings.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned));
                settings.extend(common::faults::cluster_settings(bus));
                settings
            })
        })
        .collect();
    let admin = pki.client("admin");
    let (admin_cert, admin_key) = (
        file(&dir, "admin.crt", &admin.cert),
        file(&dir, "admin.key", &admin.key),
    );
    let cli = |args: &[&str]| {
        let tls = ["--tls", "--cacert", &ca, "--cert", &admin_cert, "--key", &admin_key];
        std::process::Command::new("redis-cli")
            .args(tls)
            .args(args)
            .output()
            .expect("redis-cli")
    };
    let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
    create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let created = cli(&create);
    assert!(
        created.status.success(),
        "cluster create: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        let port = n.port.to_string();
        String::from_utf8_lossy(&cli(&["-p", &port, "CLUSTER", "INFO"]).stdout).contains("cluster_state:ok")
    }) {
        assert!(Instant::now() < deadline, "the TLS cluster did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let client = old.client("dtr-proxy");
    let prefix = unique("tls-cluster");
    let options = |files: &ScratchDir, client: Option<&Pair>| {
        let options = Options::new(StoreKind::Embedded)
            .env("DTR_REDIS_URL", format!("rediss://127.0.0.1:{}", nodes[0].port))
            .env("DTR_REDIS_CLUSTER", "true")
            .env("DTR_REDIS_KEY_PREFIX", prefix.clone())
            .env("DTR_REDIS_CA_FILE", ca.clone())
            .env("DTR_TLS_RELOAD_INTERVAL", "1");
        presenting(options, client, files)
    };
    let renewing = ScratchDir::new("cluster-renewing");
    let proxy = start(options(&renewing, Some(&client))).await;
    assert_eq!(store_state(&proxy).await, "up");
    for _ in 0..3 {
        deferred_flow(&proxy).await;
    }
    // The processes went to more than one node: the proxy reached each over TLS.
    let holding = nodes
        .iter()
        .filter(|n| {
            let port = n.port.to_string();
            let pattern = format!("{prefix}:*");
            let keys = cli(&["-p", &port, "--scan", "--pattern", &pattern]).stdout;
            !String::from_utf8_lossy(&keys).trim().is_empty()
        })
        .count();
    assert!(holding >= 2, "keys of {prefix} on {holding} node(s)");

    let refused = start(options(&ScratchDir::new("cluster-none"), None)).await;
    assert_ne!(store_state(&refused).await, "up", "without a client certificate");

    // The renewal, from a new CA: the nodes trust both while it lands.
    let unchanged = ScratchDir::new("cluster-unchanged");
    let stale = start(options(&unchanged, Some(&client))).await;
    deferred_flow(&stale).await;
    let set_trust = |bundle: &str| {
        for node in &nodes {
            let port = node.port.to_string();
            let out = cli(&["-p", &port, "CONFIG", "SET", "tls-ca-cert-file", bundle]);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
        }
    };
    set_trust(&trusted(&[old, new], "both-clients.crt"));
    let renewed = new.client("dtr-proxy");
    present(&renewing, &renewed);
    reloaded(&proxy, "redis", "replaced", "the renewed certificate was not read").await;
    deferred_flow(&proxy).await;

    // The nodes trust only the new clients' CA from now on, and drop every client: the
    // renewed proxy reconnects to each node, the one whose files did not change cannot.
    set_trust(&trusted(&[new], "new-clients.crt"));
    for node in &nodes {
        cli(&["-p", &node.port.to_string(), "CLIENT", "KILL", "TYPE", "normal"]);
    }
    store_up(&proxy, "no reconnect with the renewed certificate").await;
    for _ in 0..3 {
        deferred_flow(&proxy).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(store_state(&stale).await, "up", "the old certificate is refused now");
}

/// An OTLP/HTTP trace receiver behind TLS with `server`'s certificate that requires client
/// certificates of `clients` (a Collector with `tls.client_ca_file`): the trace exports it
/// took, and the handshakes it refused.
async fn otlp_receiver_over_tls(server: &Pair, clients: &Pki) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(chain(&clients.ca_pem));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("client verifier");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain(&server.cert),
            PrivateKeyDer::from_pem_slice(server.key.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (exports, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (taken, turned_away) = (exports.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, taken, turned_away) = (acceptor.clone(), taken.clone(), turned_away.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    turned_away.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let taken = taken.clone();
                    async move {
                        let export = request.method() == http::Method::POST
                            && request.uri().path() == "/v1/traces"
                            && request
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                        let body = http_body_util::BodyExt::collect(request.into_body())
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = if export && !body.is_empty() {
                            taken.fetch_add(1, Ordering::SeqCst);
                            200
                        } else {
                            400
                        };
                        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, exports, refused)
}

/// Traces to a receiver with a certificate from a private CA that requires client
/// certificates (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`): a
/// certificate the receiver does not trust gets no export through; once the files hold one it
/// does, they are read again without a restart and the spans arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_receiver_that_requires_a_client_certificate() {
    let (collector, clients, stranger) = (
        &Pki::new("Collector CA"),
        &Pki::new("Collector clients"),
        &Pki::new("Someone else"),
    );
    let (port, exports, refused) = otlp_receiver_over_tls(&collector.server("collector"), clients).await;
    let dir = ScratchDir::new("otlp-tls");
    let untrusted = stranger.client("dtr-proxy");
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("https://127.0.0.1:{port}/v1/traces"),
            )
            .env(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                file(&dir, "collector-ca.crt", &collector.ca_pem),
            )
            .env(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                file(&dir, "client.crt", &untrusted.cert),
            )
            .env(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                file(&dir, "client.key", &untrusted.key),
            )
            .env("DTR_TLS_RELOAD_INTERVAL", "1"),
    )
    .await;
    let within = |what: &'static str, counter: Arc<AtomicUsize>| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while counter.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(jwks_status(&proxy).await, 200);
    within("no export was tried", refused.clone()).await;
    assert_eq!(
        exports.load(Ordering::SeqCst),
        0,
        "an untrusted certificate got through"
    );

    // The renewal: a certificate of the receiver's clients' CA lands in the files.
    let trusted = clients.client("dtr-proxy");
    present(&dir, &trusted);
    reloaded(&proxy, "otlp", "replaced", "the renewed certificate was not read").await;
    assert_eq!(jwks_status(&proxy).await, 200);
    within("the spans did not arrive", exports.clone()).await;
}

/// The verification service behind a certificate from the cluster's own CA
/// (`DTR_EVENTS_CA_FILE`): while the file holds another CA no event gets through; once it
/// holds the right one it is read again without a restart, and the events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_reach_a_verification_service_with_a_private_ca() {
    let (cluster, other) = (&Pki::new("Cluster CA"), &Pki::new("Another CA"));
    let (plain, events) = common::kit::event_receiver().await;
    let target: u16 = plain
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("receiver port");
    let relay = tls_relay(&cluster.server("verifier"), target).await;
    let dir = ScratchDir::new("events-ca");
    let ca = file(&dir, "events-ca.crt", &other.ca_pem);
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .env("DTR_EVENTS_URL", format!("https://127.0.0.1:{relay}/dtr-events"))
            .env("DTR_EVENTS_SECRET", WEBHOOK_SECRET)
            .env("DTR_EVENTS_CA_FILE", ca.clone())
            .env("DTR_TLS_RELOAD_INTERVAL", "1"),
    )
    .await;
    deferred_flow(&proxy).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        events.lock().expect("events").is_empty(),
        "an event went to a receiver whose CA is not trusted"
    );

    replace_file(&ca, &cluster.ca_pem);
    reloaded(&proxy, "events_ca", "replaced", "the CA file was not read again").await;
    deferred_flow(&proxy).await;
    let arrived = common::kit::wait_for_events(&events, 1, Duration::from_secs(15)).await;
    assert!(
        !arrived.is_empty(),
        "no event reached the receiver once its CA was trusted"
    );
    let (headers, _) = &arrived[0];
    assert!(headers.contains_key("webhook-signature"), "{headers:?}");
}

/// RPs inside the cluster, behind its own CA (`DTR_RP_CA_FILE`): while the file holds another
/// CA, the ping does not get through and keys at a `jwks_uri` cannot be fetched (the exchange
/// is `temporarily_unavailable`, not the client's fault); once it holds
/// the right one it is read again without a restart, the retried ping arrives and the
/// `private_key_jwt` client authenticates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rps_with_a_private_ca_get_their_pings_and_serve_their_keys() {
    let (cluster, other) = (&Pki::new("Cluster CA"), &Pki::new("Another CA"));
    let receiver = ping_receiver(Vec::new()).await;
    let target: u16 = receiver
        .url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("receiver port");
    let relay = tls_relay(&cluster.server("rp"), target).await;
    let keys = serve_http(|_request: hyper::Request<hyper::body::Incoming>| async {
        let mut response = empty_response(200);
        *response.body_mut() = json!({"keys": [client_jwk()]}).to_string().into();
        response
    })
    .await;
    let keys = tls_relay(&cluster.server("rp-keys"), keys.port()).await;
    let dir = ScratchDir::new("rp-ca");
    let ca = file(&dir, "rp-ca.crt", &other.ca_pem);
    let proxy = start(
        Options::new(StoreKind::Embedded)
            .client(json!({
                "client_id": "dtr-client",
                "notification_endpoint": format!("https://127.0.0.1:{relay}/dtr/ping"),
            }))
            .client(json!({"client_id": "dtr-jwt", "jwks_uri": format!("https://127.0.0.1:{keys}/jwks")}))
            .env("DTR_RP_CA_FILE", ca.clone())
            .env("DTR_TLS_RELOAD_INTERVAL", "1"),
    )
    .await;
    let jwt = Auth::Jwt("dtr-jwt");
    let (code, verifier) = proxy.deferred_code("dtr-jwt", &unique("keyed")).await;
    let refused = proxy.exchange(&jwt, &code, &verifier, None).await;
    assert_eq!(
        refused.error(),
        "temporarily_unavailable",
        "keys from an untrusted host: {}",
        refused.json
    );
    let user = unique("pinged");
    let (id, _) = proxy.start_process(&dtr_client(), &user, Some("notify-1")).await;
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    // The grace before the first ping (2 s) and a retry.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.count(), 0, "a ping went to an RP whose CA is not trusted");

    replace_file(&ca, &cluster.ca_pem);
    reloaded(&proxy, "rp_ca", "replaced", "the CA file was not read again").await;
    assert!(
        receiver.wait_for(1, Duration::from_secs(30)).await,
        "no ping reached the RP once its CA was trusted"
    );
    let (id_of_jwt, _) = proxy.start_process(&jwt, &unique("keyed"), None).await;
    assert!(!id_of_jwt.is_empty());
    let (auth, body) = receiver.received.lock().expect("pings")[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer notify-1"));
    assert_eq!(
        body["auth_req_id"].as_str().or(body["deferred_auth_id"].as_str()),
        Some(id.as_str()),
        "{body}"
    );
}
