use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_effective_settings_show_no_secret() {
    let config = Config::from_env(vec![
        ("DTR_UPSTREAM_URL", "http://kc:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_REDIS_URL", "redis://default:hunter2hunter2@redis:6379"),
        ("DTR_HASH_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ("DTR_TOKEN_KEYS", "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ("DTR_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("DTR_KEYCLOAK_ADMIN_CLIENT_ID", "dtr-admin"),
        ("DTR_KEYCLOAK_ADMIN_CLIENT_SECRET", "admin-secret-value"),
        ("DTR_OPERATOR_TOKEN", "op-token-0123456789abcdefghijklmnopqrstuv"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp","client_secret":"0123456789abcdef0123456789abcdef-x"}]"#,
        ),
    ])
    .unwrap();
    let text = config.effective().to_string();
    for secret in [
        "hunter2hunter2",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "admin-secret-value",
        "op-token-0123456789",
        "0123456789abcdef",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("redis://default:***@redis:6379"), "{text}");
    assert!(text.contains("\"upstream_url\":\"http://kc:8080/\""), "{text}");
}

#[test]
fn minimal_environment_loads_with_defaults() {
    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://keycloak:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
    ]))
    .expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");
    assert_eq!(config.store_kind(), "embedded");
    assert!(config.offline_access);
    assert_eq!(config.default_interval, 5);
    assert_eq!(config.public_origin(), "https://id.example.com");
}

#[test]
fn every_error_is_reported_at_once() {
    let err = Config::from_env(env(&[
        ("DTR_PUBLIC_URL", "not a url"),
        ("DTR_LISTEN", "nowhere"),
        ("DTR_REDIS_URL", "redis://localhost:6379"),
        ("DTR_DEFAULT_INTERVAL", "0"),
    ]))
    .expect_err("invalid");
    let text = err.to_string();
    for needle in [
        "DTR_UPSTREAM_URL: required",
        "DTR_PUBLIC_URL",
        "DTR_LISTEN",
        "DTR_HASH_KEY: required",
        "DTR_TOKEN_KEYS: required",
        "DTR_DEFAULT_INTERVAL",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn redis_through_sentinel_with_its_own_credentials() {
    let keys = [
        ("DTR_UPSTREAM_URL", "http://keycloak:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_HASH_KEY", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="),
        ("DTR_TOKEN_KEYS", "k1:CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk="),
    ];
    let mut pairs = keys.to_vec();
    pairs.extend([
        ("DTR_REDIS_URL", "redis+sentinel://s-0:26379,s-1:26379/dtr"),
        ("DTR_REDIS_PASSWORD", "data-pass"),
        ("DTR_REDIS_SENTINEL_PASSWORD", "sentinel-pass"),
        ("DTR_REDIS_TIMEOUT", "3"),
    ]);
    let config = Config::from_env(env(&pairs)).expect("valid");
    assert_eq!(config.store_kind(), "redis-sentinel");
    let StoreSettings::Redis(options) = &config.store else {
        panic!("not redis")
    };
    assert_eq!(options.password.as_deref(), Some("data-pass"));
    assert_eq!(options.sentinel_password.as_deref(), Some("sentinel-pass"));
    assert_eq!(options.timeout, Duration::from_secs(3));
    assert!(
        !format!("{options:?}").contains("pass"),
        "secrets stay out of debug output"
    );

    let mut pairs = keys.to_vec();
    pairs.extend([
        ("DTR_REDIS_URL", "redis://redis:6379"),
        ("DTR_REDIS_SENTINEL_PASSWORD", "sentinel-pass"),
        ("DTR_REDIS_TIMEOUT", "0"),
    ]);
    pairs.push(("DTR_REDIS_CA_FILE", "/nonexistent/ca.pem"));
    let text = Config::from_env(env(&pairs)).expect_err("invalid").to_string();
    assert!(text.contains("DTR_REDIS_SENTINEL_USERNAME/PASSWORD"), "{text}");
    assert!(text.contains("DTR_REDIS_CA_FILE: only for a rediss://"), "{text}");
    assert!(text.contains("DTR_REDIS_TIMEOUT"), "{text}");

    let mut pairs = keys.to_vec();
    pairs.extend([
        ("DTR_REDIS_URL", "redis+sentinel://s-0:26379"),
        ("DTR_REDIS_CLUSTER", "true"),
    ]);
    let text = Config::from_env(env(&pairs)).expect_err("invalid").to_string();
    assert!(text.contains("DTR_REDIS_URL: a Sentinel URL cannot"), "{text}");
}

#[test]
fn nested_env_and_json_clients() {
    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "http://localhost:8080"),
        ("DTR_ALLOW_INSECURE_HTTP", "true"),
        ("DTR_PATHS__TOKEN", "/oauth/token"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp1","interval":2,"notification_endpoint":"http://rp/ping"}]"#,
        ),
    ]))
    .expect("valid");
    assert_eq!(config.paths.token, "/oauth/token");
    assert_eq!(config.paths.authorization, PathTemplates::default().authorization);
    assert_eq!(config.clients.len(), 1);
    assert_eq!(config.clients[0].interval, Some(2));
}

#[test]
fn plain_http_notification_endpoint_needs_the_insecure_flag() {
    let err = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp1","notification_endpoint":"http://rp/ping"}]"#,
        ),
    ]))
    .expect_err("invalid");
    assert!(err.to_string().contains("notification_endpoint must be an https URL"));
}

#[test]
fn timeouts_and_trusted_proxies_from_env() {
    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_HEADER_READ_TIMEOUT", "2"),
        ("DTR_BODY_READ_TIMEOUT", "3"),
        ("DTR_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.0/16,fd00::/8,203.0.113.7"),
    ]))
    .expect("valid");
    assert_eq!(config.header_read_timeout, Duration::from_secs(2));
    assert_eq!(config.body_read_timeout, Duration::from_secs(3));
    let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "203.0.113.7/32"]);

    let defaults = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_TRUSTED_PROXIES", ""),
    ]))
    .expect("valid");
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(15));
    assert_eq!(defaults.body_read_timeout, Duration::from_secs(15));
    assert!(defaults.trusted_proxies.is_empty());
}

#[test]
fn trusted_proxies_from_a_toml_array_and_every_bad_entry_reported() {
    let dir = std::env::temp_dir().join(format!("dtr-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("trusted.toml");
    std::fs::write(&file, "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").expect("write");
    let config = Config::from_env(env(&[
        ("DTR_CONFIG", file.to_str().expect("utf-8 path")),
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
    ]))
    .expect("valid");
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);

    let err = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_TRUSTED_PROXIES", "10.0.0.0/33,example.com"),
        ("DTR_BODY_READ_TIMEOUT", "0"),
    ]))
    .expect_err("invalid");
    let text = err.to_string();
    for needle in ["\"10.0.0.0/33\"", "\"example.com\"", "DTR_BODY_READ_TIMEOUT"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn unknown_setting_is_a_warning_not_a_failure() {
    // Kubernetes injects DTR_PROXY_PORT=tcp://… for a Service named dtr-proxy.
    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_PROXY_PORT", "tcp://10.0.0.1:8080"),
    ]))
    .expect("valid");
    assert_eq!(
        config.warnings,
        vec!["ignoring unknown setting DTR_PROXY_PORT".to_string()]
    );
}

#[test]
fn trace_settings_are_checked_and_shown_with_the_others() {
    // Wrong OTEL_* settings are reported in the same round as wrong DTR_* ones.
    let errors = Config::from_env(env(&[
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ]))
    .unwrap_err();
    assert!(errors.0.iter().any(|e| e.starts_with("DTR_UPSTREAM_URL")), "{errors}");
    assert!(
        errors.0.iter().any(|e| e.starts_with("OTEL_TRACES_SAMPLER")),
        "{errors}"
    );

    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://kc:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t-token"),
    ]))
    .unwrap();
    assert!(config.warnings.is_empty(), "OTEL_* are not unknown DTR_* settings");
    let traces = config.traces.as_ref().expect("traces on");
    assert_eq!(traces.endpoint.as_str(), "http://collector:4318/v1/traces");
    let text = config.effective().to_string();
    assert!(!text.contains("s3cr3t-token"), "{text}");
    assert!(text.contains("\"headers\":[\"authorization\"]"), "{text}");
    assert!(text.contains("\"sampler\":\"parentbased_always_on\""), "{text}");

    let off = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://kc:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
    ]))
    .unwrap();
    assert!(off.traces.is_none());
    assert_eq!(off.effective()["traces"], serde_json::Value::Null);
}

#[test]
fn operator_tokens_from_the_setting_and_a_file_and_bad_ones_reported() {
    let base = [
        ("DTR_UPSTREAM_URL", "http://kc:8080"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
    ];
    let config = Config::from_env(env(&base)).unwrap();
    assert!(config.operator_tokens.0.is_empty(), "off unless a token is set");

    let dir = std::env::temp_dir().join(format!("dtr-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, "# rotated in 2026\nfile-token-0123456789abcdefghijklmnopq\n\n").unwrap();
    let path = file.to_str().unwrap();
    let mut pairs = base.to_vec();
    pairs.push((
        "DTR_OPERATOR_TOKEN",
        "first-token-0123456789abcdefghijklmnop, second-token-0123456789abcdefghijklmn",
    ));
    pairs.push(("DTR_OPERATOR_TOKEN_FILE", path));
    pairs.push(("DTR_OPERATOR_MAX_LIFETIME", "3600"));
    let config = Config::from_env(env(&pairs)).unwrap();
    assert_eq!(config.operator_tokens.0.len(), 3);
    assert_eq!(config.operator_tokens.0[2], "file-token-0123456789abcdefghijklmnopq");
    assert_eq!(config.operator_max_lifetime, Duration::from_secs(3600));
    assert!(!format!("{:?}", config.operator_tokens).contains("token-0123"));

    let mut bad = base.to_vec();
    bad.push(("DTR_OPERATOR_TOKEN", "short"));
    bad.push(("DTR_OPERATOR_TOKEN_FILE", "/nonexistent/dtr-operator-token"));
    bad.push(("DTR_OPERATOR_MAX_LIFETIME", "5"));
    let errors = Config::from_env(env(&bad)).unwrap_err().0;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("DTR_OPERATOR_TOKEN:")));
    assert!(errors.iter().any(|e| e.starts_with("DTR_OPERATOR_TOKEN_FILE:")));
    assert!(errors.iter().any(|e| e.starts_with("DTR_OPERATOR_MAX_LIFETIME:")));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_profile_per_client_and_per_realm() {
    let config = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        ("DTR_IETF_REALMS", "oauth, agents"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp1","profile":"ietf"},{"client_id":"rp2","profile":"openid"},{"client_id":"rp3"}]"#,
        ),
    ]))
    .expect("valid");
    assert_eq!(config.ietf_realms, ["oauth", "agents"]);
    let profiles: Vec<Option<Profile>> = config.clients.iter().map(|c| c.profile).collect();
    assert_eq!(profiles, [Some(Profile::Ietf), Some(Profile::OpenId), None]);
    let effective = config.effective();
    assert_eq!(effective["ietf_realms"], serde_json::json!(["oauth", "agents"]));
    assert_eq!(effective["clients"][0]["profile"], "ietf");
    assert_eq!(effective["clients"][2]["profile"], serde_json::Value::Null);
}

#[test]
fn an_unknown_profile_is_reported_at_startup_with_the_other_errors() {
    let err = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "not a url"),
        ("DTR_CLIENTS", r#"[{"client_id":"rp1","profile":"oauth2"}]"#),
    ]))
    .expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("DTR_CLIENTS") && text.contains("oauth2"), "{text}");
    assert!(text.contains("DTR_PUBLIC_URL"), "{text}");
}

#[test]
fn a_certificate_bound_client_needs_a_port_that_sees_certificates() {
    let err = Config::from_env(env(&[
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp1","tls_client_certificate_bound_access_tokens":true}]"#,
        ),
        ("DTR_TLS_CLIENT_CA_FILE", "/nonexistent/ca.pem"),
    ]))
    .expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains(
            "clients[0] (rp1): tls_client_certificate_bound_access_tokens needs client certificates: set DTR_TLS_CLIENT_CA_FILE or DTR_CLIENT_CERT_HEADER"
        ),
        "{text}"
    );
    assert!(
        text.contains("DTR_TLS_CLIENT_CA_FILE: needs DTR_TLS_CERT_FILE and DTR_TLS_KEY_FILE"),
        "{text}"
    );
}

#[test]
fn a_client_certificate_header_needs_the_proxies_it_is_believed_from() {
    let base = [
        ("DTR_UPSTREAM_URL", "http://op:3000"),
        ("DTR_PUBLIC_URL", "https://id.example.com"),
        (
            "DTR_CLIENTS",
            r#"[{"client_id":"rp1","tls_client_certificate_bound_access_tokens":true}]"#,
        ),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut vars = base.to_vec();
        vars.extend_from_slice(extra);
        Config::from_env(env(&vars))
    };
    let err = with(&[("DTR_CLIENT_CERT_HEADER", "ssl-client-cert")]).expect_err("no trusted proxies");
    assert!(
        err.to_string()
            .contains("DTR_CLIENT_CERT_HEADER: needs DTR_TRUSTED_PROXIES"),
        "{err}"
    );
    let err = with(&[
        ("DTR_CLIENT_CERT_HEADER", "bad header"),
        ("DTR_TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .expect_err("bad name");
    assert!(
        err.to_string().contains("DTR_CLIENT_CERT_HEADER: not a header name"),
        "{err}"
    );
    let config = with(&[
        ("DTR_CLIENT_CERT_HEADER", "SSL-Client-Cert"),
        ("DTR_TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .expect("valid");
    assert_eq!(
        config.client_cert_header.as_ref().map(|h| h.as_str()),
        Some("ssl-client-cert")
    );
}
