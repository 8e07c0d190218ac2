//! The fault bed: Redis processes the test starts, kills and restarts (standalone with AOF,
//! master and replica under Sentinel, a Cluster with replicas), a relay that can cut, slow or
//! re-point a path, and a fleet of dtr-proxy processes on one store behind a round-robin
//! balancer that stops routing to a replica before it is stopped, as a Kubernetes Service does.
//! Every process is tied to the test process and killed when its handle drops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A scratch directory, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process that dies with the test: a shell holds it and kills it when its stdin (our pipe)
/// closes, however the test ends. `pid` is the process itself, for signals.
pub struct Tied {
    shell: Child,
    pub pid: u32,
}

impl Tied {
    pub fn spawn(program: &str, args: &[String]) -> Tied {
        let script = r#"prog="$1"; shift; "$prog" "$@" <&- >/dev/null 2>&1 & pid=$!; echo $pid; trap 'kill -9 $pid 2>/dev/null' EXIT; cat >/dev/null"#;
        let mut shell = Command::new("sh")
            .args(["-c", script, "tied", program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("pid");
        let pid = line.trim().parse().expect("pid");
        Tied { shell, pid }
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        self.signal("KILL");
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}

/// Runs `redis-cli -p port args…` and returns its output, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits (up to 10 s) until every replica of a master has acknowledged what the master had
/// written when called; `info` runs `INFO replication` on the master. (`WAIT` would not do: it
/// waits only for the writes of the connection that calls it, and redis-cli's has none.)
pub fn wait_replicated(info: impl Fn() -> String) {
    let offsets = |text: &str| {
        let master = text
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let replicas: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("offset="))
            .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset="))?.parse().ok())
            .collect();
        (master, replicas)
    };
    let (Some(written), _) = offsets(&info()) else {
        panic!("no master_repl_offset: {}", info());
    };
    let caught_up = wait_until(Duration::from_secs(10), || {
        let (_, replicas) = offsets(&info());
        !replicas.is_empty() && replicas.iter().all(|acked| *acked >= written)
    });
    assert!(caught_up, "the replicas did not catch up: {}", info());
}

/// Polls `check` every 50 ms for up to `within`; whether it held.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (openssl).
pub struct TlsFiles {
    pub dir: ScratchDir,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        let dir = ScratchDir::new("tls");
        let ext = dir.path("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca_key, ca, key, csr, cert) = (
            dir.path("ca.key"),
            dir.path("ca.pem"),
            dir.path("server.key"),
            dir.path("server.csr"),
            dir.path("server.pem"),
        );
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(&[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-days",
                "1",
                "-subj",
                "/CN=dtr test CA",
            ],
        ]
        .concat());
        run(&[
            &["req"],
            &ec[..],
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
        TlsFiles { dir }
    }

    pub fn ca(&self) -> String {
        self.dir.path("ca.pem")
    }

    /// The server-side settings, for redis-server's command line or a config file.
    fn settings(&self, port: u16) -> Vec<(String, String)> {
        [
            ("port", "0".to_owned()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.dir.path("server.pem")),
            ("tls-key-file", self.dir.path("server.key")),
            ("tls-ca-cert-file", self.ca()),
            ("tls-auth-clients", "no".to_owned()),
            ("tls-replication", "yes".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// One redis-server (or Sentinel) on its own port and directory.
pub struct RedisServer {
    pub port: u16,
    pub dir: ScratchDir,
    args: Vec<String>,
    process: Option<Tied>,
}

impl RedisServer {
    /// A data node; `extra` adds or overrides settings (`--appendonly yes`, `--replicaof …`).
    pub fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::start_on(free_port(), extra);
        server.launch();
        server
    }

    /// A data node whose extra settings name its port (a TLS-only node: `--port 0
    /// --tls-port <port>`).
    pub fn start_with(extra: impl FnOnce(u16) -> Vec<String>) -> RedisServer {
        let port = free_port();
        let extra = extra(port);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut server = RedisServer::start_on(port, &extra);
        server.launch();
        server
    }

    /// The server's settings, not started yet.
    fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = ScratchDir::new("redis");
        let mut args = redis_server_args(port);
        args.extend(["--dir".to_owned(), dir.path("")]);
        args.extend(["--logfile".to_owned(), dir.path("redis.log")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisServer {
            port,
            dir,
            args,
            process: None,
        }
    }

    /// A data node that speaks only TLS, on `port` as usual.
    pub fn start_tls(tls: &TlsFiles) -> RedisServer {
        let port = free_port();
        let mut extra = Vec::new();
        for (name, value) in tls.settings(port) {
            extra.push(format!("--{name}"));
            extra.push(value);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut server = RedisServer::start_on(port, &extra);
        server.launch();
        server
    }

    /// A Sentinel that speaks TLS, to its clients and to the data nodes.
    pub fn sentinel_tls(name: &str, master: u16, tls: &TlsFiles) -> RedisServer {
        let port = free_port();
        let lines: Vec<String> = tls
            .settings(port)
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        RedisServer::sentinel_on(port, name, master, &lines)
    }

    /// A Sentinel whose extra config lines name its port (a TLS-only Sentinel: `port 0`,
    /// `tls-port <port>`).
    pub fn sentinel_with(name: &str, master: u16, config: impl FnOnce(u16) -> Vec<String>) -> RedisServer {
        let port = free_port();
        let lines = config(port);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        RedisServer::sentinel_on(port, name, master, &lines)
    }

    /// A Sentinel watching `master` under `name`; `config` adds lines to its file.
    pub fn sentinel(name: &str, master: u16, config: &[&str]) -> RedisServer {
        RedisServer::sentinel_on(free_port(), name, master, config)
    }

    fn sentinel_on(port: u16, name: &str, master: u16, config: &[&str]) -> RedisServer {
        let dir = ScratchDir::new("sentinel");
        let file = dir.path("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 4000\n",
            dir.path("")
        );
        for line in config {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::File::create(&file)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("sentinel.conf");
        let mut server = RedisServer {
            port,
            dir,
            args: vec![file, "--sentinel".into()],
            process: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        self.process = Some(Tied::spawn("redis-server", &self.args));
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "redis-server on {port} did not start; its log:\n{}",
            std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// SIGKILL: no shutdown, no final fsync.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal("KILL");
            let port = self.port;
            wait_until(Duration::from_secs(5), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            });
        }
    }

    /// Starts it again on the same port, directory and settings.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// A master, one replica and one Sentinel (quorum 1): the smallest set that fails over.
pub struct SentinelBed {
    pub name: String,
    pub nodes: Vec<RedisServer>,
    pub sentinel: RedisServer,
    /// The data nodes' password, when `auth` was asked for.
    pub password: Option<String>,
}

impl SentinelBed {
    /// With `auth`, the data nodes and the Sentinel each require a password of their own.
    pub fn start(auth: bool) -> SentinelBed {
        let name = "dtr-master".to_owned();
        let password = auth.then(|| "data-secret".to_owned());
        let auth_args: Vec<String> = match &password {
            Some(p) => vec!["--requirepass".into(), p.clone(), "--masterauth".into(), p.clone()],
            None => Vec::new(),
        };
        let args: Vec<&str> = auth_args.iter().map(String::as_str).collect();
        let master = RedisServer::start(&args);
        let mut replica_args = args.clone();
        let master_port = master.port.to_string();
        replica_args.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = RedisServer::start(&replica_args);
        let auth = |port: u16, args: &[&str]| -> String {
            match &password {
                Some(p) => cli(port, &[&["--no-auth-warning", "-a", p], args].concat()),
                None => cli(port, args),
            }
        };
        assert!(
            wait_until(Duration::from_secs(10), || auth(replica.port, &["INFO", "replication"])
                .contains("master_link_status:up")),
            "replica did not sync"
        );
        let mut config = Vec::new();
        let auth_line;
        if let Some(p) = &password {
            auth_line = format!("sentinel auth-pass {name} {p}");
            config.push(auth_line.as_str());
            config.push("requirepass sentinel-secret");
        }
        let sentinel = RedisServer::sentinel(&name, master.port, &config);
        let bed = SentinelBed {
            name,
            nodes: vec![master, replica],
            sentinel,
            password,
        };
        let replica_port = bed.nodes[1].port.to_string();
        assert!(
            wait_until(Duration::from_secs(10), || bed
                .sentinel_cli(&["SENTINEL", "replicas", &bed.name])
                .contains(&replica_port)),
            "Sentinel did not find the replica"
        );
        bed
    }

    pub fn sentinel_cli(&self, args: &[&str]) -> String {
        match &self.password {
            Some(_) => cli(
                self.sentinel.port,
                &[&["--no-auth-warning", "-a", "sentinel-secret"], args].concat(),
            ),
            None => self.sentinel.cli(args),
        }
    }

    pub fn node_cli(&self, port: u16, args: &[&str]) -> String {
        match &self.password {
            Some(p) => cli(port, &[&["--no-auth-warning", "-a", p], args].concat()),
            None => cli(port, args),
        }
    }

    /// The URL the proxy is given: a Sentinel that is down first, then the live one.
    pub fn url(&self) -> String {
        let userinfo = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!(
            "redis+sentinel://{userinfo}127.0.0.1:{},127.0.0.1:{}/{}",
            free_port(),
            self.sentinel.port,
            self.name
        )
    }

    /// The port Sentinel currently names as master.
    pub fn master_port(&self) -> u16 {
        let answer = self.sentinel_cli(&["SENTINEL", "get-master-addr-by-name", &self.name]);
        answer.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits until the replicas have every write of the master, then SIGKILLs the master and
    /// waits for Sentinel to promote the replica. Returns the new master's port.
    pub fn kill_master_and_fail_over(&mut self) -> u16 {
        let old = self.master_port();
        wait_replicated(|| self.node_cli(old, &["INFO", "replication"]));
        let index = self.nodes.iter().position(|n| n.port == old).expect("master");
        self.nodes[index].kill();
        let mut new = old;
        assert!(
            wait_until(Duration::from_secs(20), || {
                new = self.master_port();
                new != old && new != 0
            }),
            "Sentinel did not fail over"
        );
        let promoted = new;
        assert!(
            wait_until(Duration::from_secs(10), || self
                .node_cli(promoted, &["ROLE"])
                .starts_with("master")),
            "the promoted node is not master"
        );
        new
    }
}

/// One line of `CLUSTER NODES`.
pub struct ClusterNode {
    pub port: u16,
    pub id: String,
    /// A master not marked failed.
    pub master: bool,
    /// A replica's master (`-` for a master).
    pub master_id: String,
    pub slots: Vec<(u16, u16)>,
}

/// A Redis Cluster of `masters` masters with one replica each, created with redis-cli.
/// The settings of a Redis Cluster node whose bus listens on `bus`: a port of its own that is
/// known to be free (by default the bus is the client port + 10 000, which may be any
/// connection's port just then; `cluster-port`, Redis 7).
pub fn cluster_settings(bus: u16) -> Vec<String> {
    let bus = bus.to_string();
    let settings = [
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus,
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
    ];
    settings.iter().map(|s| s.to_string()).collect()
}

pub struct ClusterBed {
    pub nodes: Vec<RedisServer>,
}

impl ClusterBed {
    pub fn start(masters: usize) -> ClusterBed {
        let nodes: Vec<RedisServer> = (0..masters * 2)
            .map(|_| {
                let settings = cluster_settings(free_port());
                RedisServer::start(&settings.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let created = Command::new("redis-cli").args(&args).output().expect("redis-cli");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let bed = ClusterBed { nodes };
        bed.wait_ok();
        bed
    }

    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// Every node says the cluster is ok and agrees on who owns every slot.
    pub fn wait_ok(&self) {
        assert!(
            wait_until(Duration::from_secs(20), || {
                self.nodes
                    .iter()
                    .filter(|n| n.process.is_some())
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            }),
            "cluster not ok"
        );
    }

    pub fn id(&self, port: u16) -> String {
        cli(port, &["CLUSTER", "MYID"])
    }

    /// `CLUSTER NODES` as seen by a live node.
    pub fn topology(&self) -> Vec<ClusterNode> {
        let live = self.nodes.iter().find(|n| n.process.is_some()).expect("a live node");
        live.cli(&["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let master = f.get(2)?.contains("master") && !f[2].contains("fail");
                let slots = f[8.min(f.len())..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some(ClusterNode {
                    port,
                    id: f[0].to_owned(),
                    master,
                    master_id: f.get(3)?.to_string(),
                    slots,
                })
            })
            .collect()
    }

    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).parse().expect("slot")
    }

    /// The port of the master serving `slot`, 0 while none does.
    pub fn owner(&self, slot: u16) -> u16 {
        self.topology()
            .into_iter()
            .find(|n| n.master && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or(0)
    }

    pub fn masters(&self) -> Vec<u16> {
        self.topology()
            .into_iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// Every key of the namespace `prefix` (scanned on every master).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let pattern = format!("{prefix}:*");
        self.masters()
            .into_iter()
            .flat_map(|port| {
                cli(port, &["--scan", "--pattern", &pattern])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Starts moving `slot` to another master: both sides marked, no key moved yet. Until
    /// [`ClusterBed::finish_migration`], clients meet ASK redirections.
    pub fn begin_migration(&self, slot: u16) -> (u16, u16) {
        let from = self.owner(slot);
        let to = *self.masters().iter().find(|p| **p != from).expect("another master");
        let slot = slot.to_string();
        assert_eq!(
            cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &self.id(from)]),
            "OK"
        );
        assert_eq!(
            cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &self.id(to)]),
            "OK"
        );
        (from, to)
    }

    /// Moves `count` keys (all when `None`) of a migrating slot.
    pub fn move_keys(&self, slot: u16, (from, to): (u16, u16), count: Option<usize>) {
        let slot = slot.to_string();
        let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        let keys = &keys[..count.unwrap_or(keys.len()).min(keys.len())];
        if keys.is_empty() {
            return;
        }
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        let answer = cli(from, &args);
        assert!(answer == "OK" || answer == "NOKEY", "MIGRATE: {answer}");
    }

    pub fn finish_migration(&self, slot: u16, (from, to): (u16, u16)) {
        self.move_keys(slot, (from, to), None);
        let to_id = self.id(to);
        let slot_text = slot.to_string();
        for port in [to, from] {
            assert_eq!(cli(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]), "OK");
        }
        for port in self.masters() {
            cli(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
        assert!(
            wait_until(Duration::from_secs(10), || self.owner(slot) == to),
            "slot {slot} did not move"
        );
    }

    /// The port of a replica of the master at `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let master_id = self.id(master);
        self.topology()
            .into_iter()
            .find(|n| !n.master && n.master_id == master_id)
            .map(|n| n.port)
            .expect("a replica of the master")
    }

    /// A coordinated failover of the master of `slot` to its replica (`CLUSTER FAILOVER`):
    /// returns the new master's port.
    pub fn fail_over(&self, slot: u16) -> u16 {
        let replica = self.replica_of(self.owner(slot));
        assert_eq!(cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
        assert!(
            wait_until(Duration::from_secs(15), || self.owner(slot) == replica),
            "replica did not take over"
        );
        self.wait_ok();
        replica
    }
}

/// A TCP relay in front of one dependency: it can refuse and cut connections (down), delay
/// each new connection (slow), or send new connections elsewhere (a Service whose endpoints
/// moved: established connections stay where they were).
pub struct FaultRelay {
    pub port: u16,
    target: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    down: tokio::sync::watch::Sender<bool>,
}

impl FaultRelay {
    pub async fn start(target_port: u16) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (down, watcher) = tokio::sync::watch::channel(false);
        let target = Arc::new(AtomicU16::new(target_port));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (t, d) = (target.clone(), delay_ms.clone());
        let in_flight = watcher.clone();
        super::accept_until_down(listener, watcher, move |inbound| {
            let mut watcher = in_flight.clone();
            let (target, delay) = (t.load(Ordering::SeqCst), d.clone());
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                tokio::select! {
                    _ = slow_copy(&mut in_read, &mut out_write, &delay) => {}
                    _ = slow_copy(&mut out_read, &mut in_write, &delay) => {}
                    _ = watcher.wait_for(|down| *down) => {}
                }
            });
        });
        FaultRelay {
            port,
            target,
            delay_ms,
            down,
        }
    }

    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }

    /// Holds every chunk, both ways and on established connections too, for `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn point_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

/// Copies until either side closes, holding each chunk for the relay's current delay.
async fn slow_copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    delay_ms: &AtomicU64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Round-robin TCP balancer over the fleet's public ports; a replica taken out of rotation
/// gets no new connection (its established ones finish).
pub struct Balancer {
    pub port: u16,
    backends: Arc<Mutex<Vec<(u16, bool)>>>,
}

impl Balancer {
    pub async fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backends: Arc<Mutex<Vec<(u16, bool)>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let list = backends.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let (list, next) = (list.clone(), next.clone());
                tokio::spawn(async move {
                    let candidates: Vec<u16> = list
                        .lock()
                        .expect("backends")
                        .iter()
                        .filter(|(_, routed)| *routed)
                        .map(|(p, _)| *p)
                        .collect();
                    let n = candidates.len();
                    for i in 0..n {
                        let port = candidates[(next.fetch_add(1, Ordering::Relaxed) + i) % n];
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { port, backends }
    }

    pub fn set(&self, port: u16, routed: bool) {
        let mut list = self.backends.lock().expect("backends");
        match list.iter_mut().find(|(p, _)| *p == port) {
            Some(entry) => entry.1 = routed,
            None => list.push((port, routed)),
        }
    }
}

/// One dtr-proxy process of a fleet.
pub struct Replica {
    /// The replica addressed directly (its own public and admin ports).
    pub proxy: Proxy,
    pub public_port: u16,
    pub admin_port: u16,
    pub child: Option<tokio::process::Child>,
    pub log: OutputLog,
}

/// Several dtr-proxy processes on one store and one realm, behind a balancer whose address is
/// the public URL they all serve.
pub struct Fleet {
    pub balancer: Balancer,
    /// The fleet through the balancer: logins go here.
    pub public: Proxy,
    pub replicas: Vec<Replica>,
    binary: String,
    env: Vec<(String, String)>,
}

impl Fleet {
    /// `size` processes of the proxy `binary`; `env` comes on top of the usual settings (the
    /// store, the upstream, clients…).
    pub async fn start(binary: &str, size: usize, clients: Value, env: &[(&str, &str)]) -> Fleet {
        let balancer = Balancer::start().await;
        let base = format!("http://127.0.0.1:{}", balancer.port);
        let realm = unique("r");
        let issuer = create_realm(&realm, &base).await;
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push(("DTR_CLIENTS".into(), clients.to_string()));
        let public = Proxy {
            running: None,
            base,
            admin: String::new(),
            realm: realm.clone(),
            issuer: issuer.clone(),
            http: client(),
        };
        let mut fleet = Fleet {
            balancer,
            public,
            replicas: Vec::new(),
            binary: binary.to_owned(),
            env,
        };
        for _ in 0..size {
            let (public_port, admin_port) = (free_port(), free_port());
            let proxy = Proxy {
                running: None,
                base: format!("http://127.0.0.1:{public_port}"),
                admin: format!("http://127.0.0.1:{admin_port}"),
                realm: realm.clone(),
                issuer: issuer.clone(),
                http: client(),
            };
            fleet.replicas.push(Replica {
                proxy,
                public_port,
                admin_port,
                child: None,
                log: Arc::default(),
            });
        }
        let launches: Vec<_> = (0..size).map(|i| fleet.launch(i)).collect();
        for (i, (child, log)) in launches.into_iter().enumerate() {
            fleet.replicas[i].child = Some(child);
            fleet.replicas[i].log = log;
        }
        for i in 0..size {
            fleet.wait_up(i).await;
        }
        fleet
    }

    fn launch(&self, i: usize) -> (tokio::process::Child, OutputLog) {
        use tokio::io::AsyncReadExt;
        let replica = &self.replicas[i];
        let mut child = tokio::process::Command::new(&self.binary)
            .env_clear()
            .envs(base_env(self.balancer.port, op().port))
            .env("DTR_LISTEN", format!("127.0.0.1:{}", replica.public_port))
            .env("DTR_ADMIN_LISTEN", format!("127.0.0.1:{}", replica.admin_port))
            .env("DTR_SHUTDOWN_DELAY", "0")
            .env("DTR_LOG", "warn,dtr=info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the proxy binary");
        let log: OutputLog = Arc::default();
        let streams: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut stream in streams {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock().expect("log").push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        (child, log)
    }

    async fn wait_up(&self, i: usize) {
        let replica = &self.replicas[i];
        let up = wait_until_up(&replica.proxy.http, &replica.proxy.admin).await;
        assert!(up, "replica {i} did not come up:\n{}", replica.log.lock().expect("log"));
        self.balancer.set(replica.public_port, true);
    }

    pub fn replica(&self, i: usize) -> &Proxy {
        &self.replicas[i].proxy
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// SIGKILL, without warning the balancer first (a crash).
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.balancer.set(self.replicas[i].public_port, false);
    }

    /// Out of rotation, then SIGTERM; waits for a clean exit (the drain).
    pub async fn stop(&mut self, i: usize) {
        self.balancer.set(self.replicas[i].public_port, false);
        if let Some(mut child) = self.replicas[i].child.take() {
            let pid = child.id().expect("pid").to_string();
            Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("drained in time")
                .expect("exit");
            assert!(
                status.success(),
                "replica {i} exited {status:?}:\n{}",
                self.replicas[i].log.lock().expect("log")
            );
        }
    }

    /// Starts a stopped or killed replica again on its ports; back in rotation once up.
    pub async fn restart(&mut self, i: usize) {
        let (child, log) = self.launch(i);
        self.replicas[i].child = Some(child);
        self.replicas[i].log = log;
        self.wait_up(i).await;
    }

    /// Everything every replica logged, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i}\n{}", r.log.lock().expect("log")))
            .collect()
    }
}

/// Counts what reached an RP's notification endpoint and answers as the test says: a status,
/// or no answer at all (hanging) while `hang` is set.
pub struct ControlledReceiver {
    pub url: String,
    pub received: Arc<Mutex<HashMap<String, usize>>>,
    /// Every request, answered or not.
    pub attempts: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    pub hang: Arc<AtomicBool>,
}

impl ControlledReceiver {
    pub async fn start() -> ControlledReceiver {
        use http_body_util::BodyExt;
        let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(204));
        let hang = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (log, st, hg, at) = (received.clone(), status.clone(), hang.clone(), attempts.clone());
        let addr = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
            let (log, st, hg, at) = (log.clone(), st.clone(), hg.clone(), at.clone());
            async move {
                at.fetch_add(1, Ordering::SeqCst);
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if hg.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let status = st.load(Ordering::SeqCst);
                if status < 300 {
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = json["deferred_auth_id"].as_str().unwrap_or_default().to_owned();
                    *log.lock().expect("log").entry(id).or_default() += 1;
                }
                empty_response(status)
            }
        })
        .await;
        let url = format!("http://{addr}/dtr/ping");
        ControlledReceiver {
            url,
            received,
            attempts,
            status,
            hang,
        }
    }

    /// How many pings were accepted for `id`.
    pub fn accepted(&self, id: &str) -> usize {
        self.received.lock().expect("log").get(id).copied().unwrap_or(0)
    }
}

/// A token-endpoint call that may fail at the transport (the replica died under it):
/// `Err` for no answer, else (status, body).
pub async fn try_token(proxy: &Proxy, form: &[(&str, &str)]) -> Result<(u16, Value), String> {
    let Auth::Basic(id, secret) = dtr_client() else {
        unreachable!("dtr-client uses Basic")
    };
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let response = proxy
        .http
        .post(proxy.token_url())
        .header("authorization", format!("Basic {credentials}"))
        .form(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

pub const DEFERRED: &str = "urn:openid:params:grant-type:deferred";
