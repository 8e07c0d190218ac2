//! The composition root: builds every part from the configuration, handing each only the
//! handles it uses, and starts the two ports and the ping worker. Nothing imports this module
//! but `main` (and tests, through [`start_on`] and [`compose`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::client_auth::ClientVerifier;
use crate::client_keys::ClientKeys;
use crate::clients::Clients;
use crate::config::{Config, Provisioning, StoreSettings};
use crate::dpop::DpopVerifier;
use crate::endpoints::acknowledge::Acknowledge;
use crate::endpoints::authorize::Authorize;
use crate::endpoints::cancel::Cancel;
use crate::endpoints::checks::Checks;
use crate::endpoints::completion::{Completions, Verdicts};
use crate::endpoints::discovery::Discovery;
use crate::endpoints::events::{EventSink, Events};
use crate::endpoints::exchange::{Exchange, ExchangeSettings};
use crate::endpoints::federated::FederatedRequests;
use crate::endpoints::operator::OperatorApi;
use crate::endpoints::ping::{self, Pinger};
use crate::endpoints::poll::Poll;
use crate::endpoints::revoke::{Operator, Revoker};
use crate::endpoints::token::{DeferredGrant, POLL_ROUTE};
use crate::federation::provision::{EndpointProvisioner, KeycloakProvisioner, Provisioner};
use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::protocol::errors::Source;
use crate::protocol::routes::{PublicUrls, Routes};
use crate::protocol::wire::error::AUTHORIZATION_PENDING;
use crate::records::Records;
use crate::serve::access::AccessLog;
use crate::serve::admin::{AdminService, Readiness};
use crate::serve::proxy::{PublicService, RequestLimits};
use crate::serve::server::{serve, Limits};
use crate::store::{MemoryStore, RedisStore, Store, StoreError};
use crate::telemetry::{SpanExport, Telemetry};
use crate::tls::{CertificateFiles, ServerCas};
use crate::upstream::{http_client, http_client_with, ExportClient, OpClient, Upstream};

/// Everything that serves, built and wired.
pub struct Services {
    pub metrics: Metrics,
    pub public: Arc<PublicService>,
    pub admin: Arc<AdminService>,
    pub pinger: Arc<Pinger>,
    pub readiness: Arc<Readiness>,
    /// Federated clients, when configured (its expiry sweep runs beside the pings).
    pub federation: Option<Arc<Federation>>,
}

/// Connects the configured store; Redis records its commands' latency and failures in
/// `metrics` when given.
pub fn connect_store(config: &Config, metrics: Option<&Metrics>) -> Result<Store, StoreError> {
    Ok(match &config.store {
        StoreSettings::Embedded => Store::Memory(MemoryStore::new()),
        StoreSettings::Redis(options) => {
            let store = RedisStore::connect(options)?;
            Store::Redis(match metrics {
                Some(metrics) => store.with_metrics(metrics.store()),
                None => store,
            })
        }
    })
}

/// The OP client for pass-through and the back channel, from the configuration, traced with
/// `telemetry`.
pub fn upstream(config: &Config, metrics: &Metrics, telemetry: Telemetry) -> Arc<Upstream> {
    let upstream = Upstream::new(
        &config.upstream_url,
        &config.public_url,
        config.trusted_proxies.clone(),
        config.upstream_timeout,
        metrics.clone(),
    )
    .with_telemetry(telemetry);
    Arc::new(match &config.upstream_tls {
        Some(tls) => upstream.with_tls(tls),
        None => upstream,
    })
}

/// Starts the span exporter when traces are configured (`OTEL_EXPORTER_OTLP_ENDPOINT`): the
/// tracer every part is handed, and the exporter to flush at shutdown. Off otherwise.
pub fn telemetry(config: &Config) -> Result<(Telemetry, Option<SpanExport>), StartError> {
    let Some(settings) = &config.traces else {
        return Ok((Telemetry::off(), None));
    };
    let http = match &settings.tls {
        Some(tls) => client_trusting(tls.roots.as_ref(), tls.certificate.as_ref()),
        None => http_client(),
    };
    let client = ExportClient::new(http, tokio::runtime::Handle::current(), settings.timeout);
    let (telemetry, export) = Telemetry::start(settings, Arc::new(client)).map_err(StartError::Telemetry)?;
    tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, "exporting traces");
    Ok((telemetry, Some(export)))
}

/// A pooled client trusting `roots` (besides or instead of the system's, as they were loaded)
/// and presenting `certificate` when asked; the shared client when neither is set. Their files
/// were checked at startup, and a reload of either is used from the next connection.
fn client_trusting(
    roots: Option<&Arc<ServerCas>>,
    certificate: Option<&Arc<CertificateFiles>>,
) -> crate::upstream::HttpClient {
    if roots.is_none() && certificate.is_none() {
        return http_client();
    }
    match crate::tls::client_config_with(roots, certificate) {
        Ok(tls) => http_client_with(tls),
        Err(_) => http_client(),
    }
}

/// Builds every part from `config`, on `store`, with `op` as the OP's back channel and
/// `upstream` for pass-through (in production the same client), tracing with `telemetry`.
/// Tests pass a store and an OP of their own and call the services in memory.
pub fn compose(
    config: &Config,
    store: Store,
    upstream: Arc<Upstream>,
    op: Arc<dyn OpClient>,
    metrics: Metrics,
    telemetry: Telemetry,
) -> Services {
    let routes = Routes::new(&config.paths);
    let urls = PublicUrls::new(config.public_origin(), routes.clone());
    let records = Records::new(store.clone(), config.hash_key.clone(), config.sealer.clone());
    let clients = Clients::new(config.clients.clone(), config.require_dpop, config.ietf_realms.clone());
    let federation = config.federation.clone().map(|settings| {
        let provisioner: Arc<dyn Provisioner> = match &settings.provisioning {
            Provisioning::Endpoint { url, secret } => Arc::new(EndpointProvisioner {
                http: http_client(),
                url: url.clone(),
                secret: secret.clone(),
                timeout: config.upstream_timeout,
            }),
            Provisioning::Keycloak(account) => {
                Arc::new(KeycloakProvisioner::new(op.clone(), routes.clone(), account.clone()))
            }
        };
        Arc::new(Federation::new(
            settings,
            provisioner,
            clients.clone(),
            config.allow_insecure_http,
            metrics.clone(),
        ))
    });
    let dpop = DpopVerifier::new(store.clone(), config.hash_key.clone(), config.dpop_nonce);
    let verifier = ClientVerifier::new(
        ClientKeys::new(
            client_trusting(config.rp_roots.as_ref(), None),
            config.jwks_cache_ttl,
            config.upstream_timeout,
        ),
        store,
        config.hash_key.clone(),
    );
    let checks = Checks {
        clients: clients.clone(),
        verifier,
        dpop: dpop.clone(),
        urls: urls.clone(),
    };
    let ping_wakeup = Arc::new(Notify::new());
    let readiness = Arc::new(Readiness::default());
    let revoker = Arc::new(Revoker {
        op: op.clone(),
        routes: routes.clone(),
        metrics: metrics.clone(),
        operator: config.keycloak_admin.clone().map(Operator::new),
    });
    let events = Events {
        metrics: metrics.clone(),
        records: records.clone(),
        sink: config.events.clone().map(|settings| {
            let http = client_trusting(settings.roots.as_ref(), None);
            Arc::new(EventSink {
                settings,
                http,
                timeout: config.ping_timeout,
                telemetry: telemetry.clone(),
            })
        }),
    };
    let verdicts = Verdicts {
        records: records.clone(),
        clients: clients.clone(),
        metrics: metrics.clone(),
        ping_wakeup: ping_wakeup.clone(),
        revoker: revoker.clone(),
    };

    let public = PublicService {
        routes,
        upstream,
        authorize: Authorize {
            clients: clients.clone(),
            records: records.clone(),
            urls: urls.clone(),
            metrics: metrics.clone(),
            offline_access: config.offline_access,
            login_ttl: config.login_ttl,
            federated: federation.clone().map(|federation| FederatedRequests {
                federation,
                urls: urls.clone(),
                metrics: metrics.clone(),
                offline_access: config.offline_access,
            }),
        },
        acknowledge: Acknowledge {
            records: records.clone(),
            clients: clients.clone(),
            urls: urls.clone(),
            metrics: metrics.clone(),
            deferred_code_ttl: config.deferred_code_ttl,
        },
        token: DeferredGrant {
            exchange: Exchange {
                checks: checks.clone(),
                records: records.clone(),
                op: op.clone(),
                metrics: metrics.clone(),
                settings: ExchangeSettings {
                    default_interval: config.default_interval,
                    default_expires_in: config.default_expires_in,
                    interim_id_token: config.interim_id_token,
                    deferred_code_ttl: config.deferred_code_ttl,
                    offline_access: config.offline_access,
                },
                nonce_verified: Default::default(),
                verdicts: verdicts.clone(),
                revoker: revoker.clone(),
                events: events.clone(),
                telemetry: telemetry.clone(),
            },
            poll: Poll {
                checks: checks.clone(),
                records: records.clone(),
                op: op.clone(),
                metrics: metrics.clone(),
                revoker: revoker.clone(),
                events: events.clone(),
                default_interval: config.default_interval,
            },
        },
        cancel: Cancel {
            checks,
            records: records.clone(),
            metrics: metrics.clone(),
            revoker: revoker.clone(),
            events: events.clone(),
        },
        discovery: Discovery {
            op,
            clients: clients.clone(),
            urls: urls.clone(),
            metrics: metrics.clone(),
            federation: federation.clone(),
            certificates_end_here: config
                .tls
                .as_ref()
                .is_some_and(crate::tls::ServerTls::requests_client_certificates),
        },
        federated: federation.clone().map(|federation| FederatedRequests {
            federation,
            urls,
            metrics: metrics.clone(),
            offline_access: config.offline_access,
        }),
        dpop,
        pending_polls: metrics.answer_counters(POLL_ROUTE, Source::Client.label(), AUTHORIZATION_PENDING),
        metrics: metrics.clone(),
        limits: RequestLimits {
            max_header_bytes: config.max_header_bytes,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
        },
        telemetry: telemetry.clone(),
        forwarded_certificates: crate::tls::ForwardedCertificates::new(
            config.client_cert_header.clone(),
            config.trusted_proxies.clone(),
        ),
    };
    let admin = AdminService {
        records: records.clone(),
        completions: Completions {
            verdicts: verdicts.clone(),
            secret: config.webhook_secret.clone(),
            hold: config.completion_hold,
        },
        operator: OperatorApi::new(
            &config.operator_tokens,
            config.operator_max_lifetime.as_millis() as u64,
            verdicts.clone(),
            events.clone(),
        ),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        body_read_timeout: config.body_read_timeout,
        telemetry: telemetry.clone(),
    };
    let pinger = Pinger {
        records,
        clients,
        metrics,
        http: client_trusting(config.rp_roots.as_ref(), None),
        timeout: config.ping_timeout,
        wakeup: ping_wakeup,
        revoker,
        events,
        telemetry,
    };
    Services {
        metrics: public.metrics.clone(),
        public: Arc::new(public),
        admin: Arc::new(admin),
        pinger: Arc::new(pinger),
        readiness,
        federation,
    }
}

/// How often federated clients whose statement expired are disabled at the OP.
const FEDERATION_SWEEP: std::time::Duration = std::time::Duration::from_secs(15);

async fn sweep_federation(federation: Arc<Federation>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FEDERATION_SWEEP) => federation.sweep().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Reconciles the OP's federated clients with the trust roots: at once, then every
/// `DTR_FEDERATION_RECONCILE_INTERVAL`.
async fn reconcile_federation(
    federation: Arc<Federation>,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = federation.reconcile() => {}
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The span exporter, flushed last.
    export: Option<SpanExport>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Telemetry(String),
}

/// Binds the configured addresses and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let public = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    start_on(config, public, admin).await
}

/// Starts serving on listeners bound by the caller (tests bind port 0 first).
pub async fn start_on(config: Config, public: TcpListener, admin: TcpListener) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let store = connect_store(&config, Some(&metrics))?;
    let redis_tls = match (&store, &config.store) {
        (Store::Redis(redis), StoreSettings::Redis(options)) => crate::store::TlsFiles::new(redis.clone(), options),
        _ => None,
    };
    let store_kind = store.kind();
    let (telemetry, export) = telemetry(&config)?;
    let upstream = upstream(&config, &metrics, telemetry.clone());
    let services = compose(&config, store, upstream.clone(), upstream, metrics, telemetry);
    let (shutdown, watcher) = watch::channel(false);
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let public_tls = config.tls.as_ref().map(|tls| tls.server_config()).transpose()?;
    let admin_tls = config.admin_tls.as_ref().map(|tls| tls.server_config()).transpose()?;
    let mut tasks = Vec::new();
    // Every TLS file is looked at on the same interval, each set by a task of its own.
    let watch = |listener, what, file, reload: Arc<dyn Fn() -> crate::tls::Reload + Send + Sync>| {
        tokio::spawn(crate::tls::watch_reloads(
            listener,
            what,
            file,
            reload,
            config.tls_reload_interval,
            services.metrics.clone(),
            watcher.clone(),
        ))
    };
    let listeners = [
        ("public", "public_client_ca", &config.tls),
        ("admin", "admin_client_ca", &config.admin_tls),
    ];
    for (listener, client_ca, tls) in listeners {
        let Some(tls) = tls else { continue };
        let (certificate, file) = (tls.clone(), tls.cert_file().to_owned());
        tasks.push(watch(
            listener,
            "TLS certificate",
            file,
            Arc::new(move || certificate.reload()),
        ));
        if let Some(cas) = tls.client_cas() {
            let (cas, file) = (cas.clone(), cas.file().to_owned());
            tasks.push(watch(
                client_ca,
                "client CA bundle",
                file,
                Arc::new(move || cas.reload()),
            ));
        }
    }
    if let Some(files) = redis_tls.map(Arc::new) {
        let file = files.file();
        tasks.push(watch(
            "redis",
            "Redis TLS files",
            file,
            Arc::new(move || files.reload()),
        ));
    }
    let traces_tls = config.traces.as_ref().and_then(|traces| traces.tls.as_ref());
    let bundles = [
        ("upstream", "the OP's CA file", config.upstream_roots.as_ref()),
        (
            "events_ca",
            "the events receiver's CA file",
            config.events.as_ref().and_then(|events| events.roots.as_ref()),
        ),
        ("rp_ca", "the RPs' CA file", config.rp_roots.as_ref()),
        (
            "otlp_ca",
            "the trace receiver's CA file",
            traces_tls.and_then(|tls| tls.roots.as_ref()),
        ),
    ];
    for (listener, what, roots) in bundles {
        let Some(roots) = roots else { continue };
        let (roots, file) = (roots.clone(), roots.file().to_owned());
        tasks.push(watch(listener, what, file, Arc::new(move || roots.reload())));
    }
    if let Some(certificate) = traces_tls.and_then(|tls| tls.certificate.as_ref()) {
        let (certificate, file) = (certificate.clone(), certificate.cert_file().to_owned());
        tasks.push(watch(
            "otlp",
            "the trace exporter's client certificate",
            file,
            Arc::new(move || certificate.reload()),
        ));
    }

    let public_service = services.public.clone();
    let access = Arc::new(AccessLog::new(&services.metrics, config.access_log));
    let public_task = tokio::spawn(serve(
        public,
        Limits {
            max_header_bytes: config.max_header_bytes,
            header_read_timeout: config.header_read_timeout,
        },
        config.shutdown_grace,
        public_tls,
        watcher.clone(),
        move |request, peer| {
            let (service, access) = (public_service.clone(), access.clone());
            async move {
                let timing = access.begin(request.method());
                let (endpoint, response) = service.handle_routed(request, peer);
                let response = response.await;
                access.end(timing, endpoint, response.status());
                response
            }
        },
    ));
    let admin_service = services.admin.clone();
    let admin_task = tokio::spawn(serve(
        admin,
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: config.header_read_timeout,
        },
        config.shutdown_grace,
        admin_tls,
        watcher.clone(),
        move |request, _peer| {
            let service = admin_service.clone();
            async move { service.handle(request).await }
        },
    ));
    if let Some(federation) = services.federation.clone() {
        tasks.push(tokio::spawn(sweep_federation(federation.clone(), watcher.clone())));
        let interval = federation.reconcile_interval();
        tasks.push(tokio::spawn(reconcile_federation(
            federation,
            interval,
            watcher.clone(),
        )));
    }
    let ping_task = tokio::spawn(ping::run(services.pinger.clone(), watcher));
    tasks.extend([public_task, admin_task, ping_task]);
    tracing::info!(
        %public_addr,
        %admin_addr,
        store = store_kind,
        public_tls = config.tls.is_some(),
        admin_tls = config.admin_tls.is_some(),
        "dtr-proxy serving"
    );
    Ok(Running {
        public_addr,
        admin_addr,
        readiness: services.readiness,
        shutdown,
        tasks,
        export,
    })
}

impl Running {
    /// Stops taking connections and waits (up to the grace period) for those in flight.
    pub async fn shutdown(self) {
        self.readiness.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(export) = self.export {
            // Blocks until the last batch is sent, which runs on this runtime: off its workers.
            let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
        }
    }

    /// Marks the replica unready (so Kubernetes stops routing to it) without stopping yet.
    pub fn begin_draining(&self) {
        self.readiness.draining.store(true, Ordering::Relaxed);
    }
}
