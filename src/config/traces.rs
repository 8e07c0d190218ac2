//! OpenTelemetry trace export, configured by the standard `OTEL_*` variables (the names every
//! OpenTelemetry SDK and the Collector's documentation use), read from the same environment as
//! the `DTR_*` settings and checked with them. Off unless an OTLP endpoint is set.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::tls::{self, CertificateFiles, ServerCas, TlsFileError};

/// Where and how spans are exported (OTLP over HTTP, protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub endpoint: Url,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
    pub sampler: SamplerSetting,
    /// Extra headers for the receiver (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`), e.g. a token.
    pub headers: Vec<(String, String)>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, besides the service name.
    pub resource: Vec<(String, String)>,
    /// Time one export may take (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, milliseconds).
    pub timeout: Duration,
    /// The receiver's CAs and the client certificate, when set; the system's roots without.
    pub tls: Option<ExportTls>,
}

/// TLS to the receiver as the OpenTelemetry SDKs take it: the CAs of
/// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` instead of the system's roots, and the pair of
/// `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY` presented when the receiver asks (a Collector with
/// `client_ca_file`, a mesh's gateway). Each file is read again when it changes, on
/// `DTR_TLS_RELOAD_INTERVAL`, as the proxy's other TLS files are, and in use from the next
/// connection.
#[derive(Clone)]
pub struct ExportTls {
    pub roots: Option<Arc<ServerCas>>,
    pub certificate: Option<Arc<CertificateFiles>>,
}

impl fmt::Debug for ExportTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportTls")
            .field("ca_file", &self.ca_file())
            .field("client_certificate_file", &self.certificate_file())
            .finish()
    }
}

impl PartialEq for ExportTls {
    fn eq(&self, other: &Self) -> bool {
        (self.ca_file(), self.certificate_file()) == (other.ca_file(), other.certificate_file())
    }
}

impl ExportTls {
    pub fn ca_file(&self) -> Option<&Path> {
        self.roots.as_ref().map(|roots| roots.file())
    }

    pub fn certificate_file(&self) -> Option<&Path> {
        self.certificate.as_ref().map(|certificate| certificate.cert_file())
    }
}

/// `OTEL_TRACES_SAMPLER` with its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// Follows the incoming `traceparent`'s sampled flag; a root span as the inner one says.
    ParentBased(RootSampler),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl SamplerSetting {
    /// As `OTEL_TRACES_SAMPLER[_ARG]` name it, e.g. `parentbased_traceidratio 0.25`.
    pub fn describe(&self) -> String {
        match self {
            SamplerSetting::AlwaysOn => "always_on".into(),
            SamplerSetting::AlwaysOff => "always_off".into(),
            SamplerSetting::Ratio(r) => format!("traceidratio {r}"),
            SamplerSetting::ParentBased(RootSampler::AlwaysOn) => "parentbased_always_on".into(),
            SamplerSetting::ParentBased(RootSampler::AlwaysOff) => "parentbased_always_off".into(),
            SamplerSetting::ParentBased(RootSampler::Ratio(r)) => format!("parentbased_traceidratio {r}"),
        }
    }
}

const DEFAULT_SERVICE_NAME: &str = "dtr-proxy";
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Reads the `OTEL_*` variables among `vars`: `None` when traces are off. Problems go to
/// `errors`, with the other settings'.
pub fn trace_settings(vars: &BTreeMap<String, String>, errors: &mut Vec<String>) -> Option<TraceSettings> {
    let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let either = |signal: &'static str, general: &'static str| {
        get(signal)
            .map(|v| (signal, v))
            .or_else(|| get(general).map(|v| (general, v)))
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    match get("OTEL_TRACES_EXPORTER") {
        None | Some("otlp") => {}
        Some("none") => return None,
        Some(other) => {
            errors.push(format!("OTEL_TRACES_EXPORTER: only otlp or none, got {other:?}"));
            return None;
        }
    }
    let endpoint = match (
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        // The signal's own endpoint is used as is; the general one is a base for /v1/traces.
        (Some(url), _) => http_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url, errors),
        (None, Some(base)) => http_url("OTEL_EXPORTER_OTLP_ENDPOINT", base, errors).and_then(|base| {
            let joined = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
            Url::parse(&joined).ok()
        }),
        (None, None) => return None,
    };
    if let Some((name, protocol)) = either("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
        if protocol != "http/protobuf" {
            errors.push(format!(
                "{name}: only http/protobuf is supported (point it at the receiver's OTLP/HTTP port, 4318), got {protocol:?}"
            ));
        }
    }
    if let Some((name, compression)) = either(
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ) {
        if compression != "none" {
            errors.push(format!("{name}: only none is supported, got {compression:?}"));
        }
    }
    let sampler = sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"), errors);
    let headers = match either("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
        Some((name, list)) => pairs(name, list, errors)
            .into_iter()
            .filter(|(key, value)| {
                let valid =
                    http::HeaderName::from_bytes(key.as_bytes()).is_ok() && http::HeaderValue::from_str(value).is_ok();
                if !valid {
                    errors.push(format!("{name}: {key:?} is not a valid header"));
                }
                valid
            })
            .collect(),
        None => Vec::new(),
    };
    let resource = get("OTEL_RESOURCE_ATTRIBUTES")
        .map(|list| pairs("OTEL_RESOURCE_ATTRIBUTES", list, errors))
        .unwrap_or_default();
    let timeout = match either("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
        None => Duration::from_millis(DEFAULT_TIMEOUT_MS),
        Some((name, ms)) => match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                errors.push(format!("{name}: a positive number of milliseconds, got {ms:?}"));
                Duration::from_millis(DEFAULT_TIMEOUT_MS)
            }
        },
    };
    let tls = export_tls(
        endpoint.as_ref(),
        either(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        either(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        either("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        errors,
    );
    Some(TraceSettings {
        endpoint: endpoint?,
        service_name: get("OTEL_SERVICE_NAME").unwrap_or(DEFAULT_SERVICE_NAME).to_owned(),
        sampler,
        headers,
        resource,
        timeout,
        tls,
    })
}

type Setting<'a> = Option<(&'static str, &'a str)>;

/// Reads and checks the receiver's TLS files now (`(variable, path)` each): the proxy does not
/// start on a file that cannot be used.
fn export_tls(
    endpoint: Option<&Url>,
    ca: Setting,
    certificate: Setting,
    key: Setting,
    errors: &mut Vec<String>,
) -> Option<ExportTls> {
    let first = ca.or(certificate).or(key)?;
    if endpoint.is_some_and(|url| url.scheme() != "https") {
        errors.push(format!("{}: only for an https endpoint", first.0));
        return None;
    }
    let before = errors.len();
    let roots = ca.and_then(|(name, path)| {
        // As the SDKs have it: the file's CAs instead of the system's.
        ServerCas::load(Path::new(path), true)
            .map(Arc::new)
            .map_err(|e| errors.push(format!("{name}: {e}")))
            .ok()
    });
    let certificate = match (certificate, key) {
        (None, None) => None,
        (Some((cert_name, cert)), Some((key_name, key))) => {
            match CertificateFiles::load(Path::new(cert), Path::new(key)) {
                Ok(files) => Some(Arc::new(files)),
                Err(TlsFileError::Key(e)) => {
                    errors.push(format!("{key_name}: {e}"));
                    None
                }
                Err(TlsFileError::Cert(e) | TlsFileError::ClientCa(e)) => {
                    errors.push(format!("{cert_name}: {e}"));
                    None
                }
            }
        }
        (Some((name, _)), None) | (None, Some((name, _))) => {
            errors.push(format!(
                "{name}: needs both OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY"
            ));
            None
        }
    };
    if errors.len() > before {
        return None;
    }
    match tls::client_config_with(roots.as_ref(), certificate.as_ref()) {
        Ok(_) => Some(ExportTls { roots, certificate }),
        Err(e) => {
            errors.push(format!("{}: {e}", first.0));
            None
        }
    }
}

fn http_url(name: &str, value: &str, errors: &mut Vec<String>) -> Option<Url> {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) => {
            errors.push(format!("{name}: must be an http(s) URL with a host: {value}"));
            None
        }
        Err(e) => {
            errors.push(format!("{name}: not a URL ({e}): {value}"));
            None
        }
    }
}

fn sampler(name: Option<&str>, arg: Option<&str>, errors: &mut Vec<String>) -> SamplerSetting {
    let mut ratio = || match arg {
        None => 1.0,
        Some(text) => match text.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                errors.push(format!("OTEL_TRACES_SAMPLER_ARG: a ratio from 0 to 1, got {text:?}"));
                1.0
            }
        },
    };
    match name.unwrap_or("parentbased_always_on") {
        "always_on" => SamplerSetting::AlwaysOn,
        "always_off" => SamplerSetting::AlwaysOff,
        "traceidratio" => SamplerSetting::Ratio(ratio()),
        "parentbased_always_on" => SamplerSetting::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => SamplerSetting::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => SamplerSetting::ParentBased(RootSampler::Ratio(ratio())),
        other => {
            errors.push(format!(
                "OTEL_TRACES_SAMPLER: one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio; got {other:?}"
            ));
            SamplerSetting::ParentBased(RootSampler::AlwaysOn)
        }
    }
}

/// A W3C baggage-style list, `key=value,key=value`, values percent-decoded (as the
/// OpenTelemetry specification has it for headers and resource attributes).
fn pairs(name: &str, list: &str, errors: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            errors.push(format!("{name}: expected key=value, got {item:?}"));
            continue;
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        match (decode(key), decode(value)) {
            (Ok(key), Ok(value)) if !key.is_empty() => out.push((key, value)),
            _ => errors.push(format!("{name}: not a key=value pair: {item:?}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> (Option<TraceSettings>, Vec<String>) {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut errors = Vec::new();
        (trace_settings(&vars, &mut errors), errors)
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(read(&[]), (None, vec![]));
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "x")]), (None, vec![]));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        assert!(read(&on).0.is_some());
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(read(&[on[0], off]), (None, vec![]), "{off:?}");
        }
    }

    #[test]
    fn the_general_endpoint_is_a_base_and_the_signal_endpoint_is_used_as_is() {
        let (settings, errors) = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert!(errors.is_empty());
        let settings = settings.unwrap();
        assert_eq!(settings.endpoint.as_str(), "http://collector:4318/v1/traces");
        assert_eq!(settings.service_name, "dtr-proxy");
        assert_eq!(settings.sampler, SamplerSetting::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(settings.timeout, Duration::from_secs(10));
        let (settings, _) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://otlp.example.com/custom/traces",
            ),
        ]);
        assert_eq!(
            settings.unwrap().endpoint.as_str(),
            "https://otlp.example.com/custom/traces"
        );
    }

    #[test]
    fn every_setting_is_read() {
        let (settings, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces"),
            ("OTEL_SERVICE_NAME", "dtr-edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc, x-tenant=t1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,k8s.pod.name=p-1",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(errors, Vec::<String>::new());
        let settings = settings.unwrap();
        assert_eq!(settings.service_name, "dtr-edge");
        assert_eq!(settings.sampler, SamplerSetting::ParentBased(RootSampler::Ratio(0.25)));
        assert_eq!(
            settings.headers,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        assert_eq!(settings.resource.len(), 2);
        assert_eq!(settings.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn wrong_settings_are_reported_together() {
        let (_, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_TRACES_SAMPLER:",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(name)), "{name}: {errors:?}");
        }
        let (_, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert!(errors[0].starts_with("OTEL_TRACES_SAMPLER_ARG"), "{errors:?}");
        let (_, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ]);
        assert_eq!(errors.len(), 1);
    }

    /// A CA and a client pair of it in a fresh directory: the paths of the CA, the
    /// certificate and the key.
    fn tls_files() -> (std::path::PathBuf, [String; 3]) {
        let dir = std::env::temp_dir().join(format!("otlp-tls-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["dtr-proxy".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_string_lossy().into_owned()
        };
        let paths = [
            write("ca.crt", ca.pem()),
            write("client.crt", client.pem()),
            write("client.key", key.serialize_pem()),
        ];
        (dir, paths)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn the_receivers_ca_and_a_client_certificate_are_read_at_start() {
        let (dir, [ca, cert, key]) = tls_files();
        let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
        let (settings, errors) = read(&[
            https,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        let tls = settings.unwrap().tls.unwrap();
        assert_eq!(tls.ca_file(), Some(Path::new(&ca)));
        assert_eq!(tls.certificate_file(), Some(Path::new(&cert)));
        // The CA alone, and nothing at all.
        let (settings, _) = read(&[https, ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca)]);
        assert!(settings.unwrap().tls.unwrap().certificate.is_none());
        assert_eq!(read(&[https]).0.unwrap().tls, None);

        // Every problem named by its variable.
        let (_, errors) = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ]);
        assert_eq!(errors, ["OTEL_EXPORTER_OTLP_CERTIFICATE: only for an https endpoint"]);
        let (_, errors) = read(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert)]);
        assert!(
            errors[0].starts_with("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: needs both"),
            "{errors:?}"
        );
        let (_, errors) = read(&[
            https,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &key),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &ca),
        ]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: "), "{errors:?}");
        assert!(errors[1].starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY: "), "{errors:?}");
        let (_, errors) = read(&[https, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.crt")]);
        assert!(errors[0].contains("/nonexistent/ca.crt"), "{errors:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
