//! Helpers for the end-to-end tests in `tests/tests/`: they run the real
//! fogmesh binaries as separate processes, on loopback addresses, against the
//! real Docker engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path to a fogmesh binary (`fogmesh`, `fogmesh-master`, `fogmesh-agent`),
/// built on first use with the same cargo and profile that runs the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build for the fogmesh binaries");
        assert!(status.success(), "cargo build --bins failed");
        // Test executables live in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(|deps| deps.parent()).expect("target profile dir").to_path_buf()
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Docker is running and the local test images exist (built once).
pub fn docker_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        for script in ["deploy/setup-host.sh", "deploy/images/build.sh"] {
            let out = Command::new("bash").arg(workspace().join(script)).output().expect("run setup script");
            assert!(out.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
    });
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A free port on 127.0.0.1 (TCP and UDP), by binding and releasing it.
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed (SIGKILL) when dropped; its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create process log");
        let err = file.try_clone().expect("clone log handle");
        cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err)).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master in its own data directory on free ports, plus the CLI set up to
/// talk to it.
pub struct Master {
    pub dir: PathBuf,
    pub api_port: u16,
    pub quic_port: u16,
    /// The embedded MQTT broker's port.
    pub mqtt_port: u16,
    /// More `serve` arguments (kept across restarts).
    pub serve_args: Vec<String>,
    pub proc: Option<Proc>,
}

impl Master {
    pub fn start(dir: &Path) -> Master {
        Master::start_with(dir, &[])
    }

    /// `start` with more `serve` arguments.
    pub fn start_with(dir: &Path, serve_args: &[&str]) -> Master {
        std::fs::create_dir_all(dir).expect("create test dir");
        let api_port = free_port();
        let quic_port = free_port();
        let data = dir.join("master");
        let out = Command::new(bin("fogmesh-master"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--api", &format!("127.0.0.1:{api_port}")])
            .output()
            .expect("run fogmesh-master init");
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let serve_args = serve_args.iter().map(|a| a.to_string()).collect();
        let mut master = Master { dir: dir.to_path_buf(), api_port, quic_port, mqtt_port: free_port(), serve_args, proc: None };
        master.restart();
        master
    }

    /// Starts `serve` (again) on the same data dir and ports; waits for the API.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(bin("fogmesh-master"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.dir.join("master"))
            .args(["--api", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--quic", &format!("127.0.0.1:{}", self.quic_port)])
            .args(["--offline-after", "4s", "--heartbeat", "1s"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt_port)])
            .args(&self.serve_args)
            .env("RUST_LOG", "info");
        let n = std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        self.proc = Some(Proc::spawn(cmd, self.dir.join(format!("master-{n}.log"))));
        wait_for("the master API", Duration::from_secs(20), || {
            let out = self.cli(&["node", "list"]);
            out.status.success().then_some(())
        });
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.quic_port)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("master/client.conf")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("fogmesh"))
            .args(args)
            .env("FOGMESH_CONFIG", self.config())
            .env_remove("FOGMESH_API")
            .env_remove("FOGMESH_TOKEN")
            .current_dir(workspace())
            .output()
            .expect("run fogmesh")
    }

    /// Runs the CLI and returns stdout; panics with stderr on failure.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "fogmesh {args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--format", "json"]);
        serde_json::from_str(&self.cli_ok(&all)).expect("CLI prints JSON")
    }

    pub fn token(&self) -> String {
        self.cli_ok(&["token", "create", "--ttl", "10m"]).trim().to_string()
    }

    /// API URL, a file with the CA, and the token, from client.conf.
    fn api_credentials(&self) -> (String, PathBuf, String) {
        let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.config()).expect("read client.conf")).expect("client.conf is JSON");
        let ca = self.dir.join("api-ca.pem");
        std::fs::write(&ca, conf["ca_pem"].as_str().unwrap_or_default()).expect("write CA");
        let text = |k: &str| conf[k].as_str().unwrap_or_default().to_string();
        (text("api"), ca, text("token"))
    }

    /// A form POST to the master's API (e.g. `/api/v1/query`) with its
    /// token and CA, via curl: the HTTP status and the JSON answer.
    pub fn api_post(&self, path: &str, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let (api, ca, token) = self.api_credentials();
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-w", "\n%{http_code}", "--cacert"]).arg(&ca);
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        if form.is_empty() {
            cmd.args(["-X", "POST"]);
        }
        for (k, v) in form {
            cmd.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        cmd.arg(format!("{api}{path}"));
        let out = cmd.output().expect("run curl");
        let body = text(&out.stdout);
        let (json, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
    }

    /// GET with the token (e.g. `/metrics`): the body, panicking on failure.
    pub fn api_get_text(&self, path: &str) -> String {
        let (api, ca, token) = self.api_credentials();
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "30", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{api}{path}"))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "GET {path} failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// An instant query's `data.result` (panics on an API error).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let (status, answer) = self.api_post("/api/v1/query", &[("query", expr)]);
        assert_eq!(status, 200, "query {expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the line of `/metrics` that starts with `line_start`
    /// (a metric name and its labels, then a space), if there is one.
    pub fn own_metric_value(&self, line_start: &str) -> Option<f64> {
        self.api_get_text("/metrics").lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    /// [`Master::own_metric_value`], which must be there.
    pub fn own_metric(&self, line_start: &str) -> f64 {
        self.own_metric_value(line_start).unwrap_or_else(|| panic!("{line_start} not in /metrics:\n{}", self.api_get_text("/metrics")))
    }

    /// One node of `fogmesh node list` (JSON), which must be there.
    pub fn node(&self, name: &str) -> serde_json::Value {
        let nodes = self.cli_json(&["node", "list"]);
        nodes.as_array().and_then(|n| n.iter().find(|n| n["name"] == name).cloned()).unwrap_or_else(|| panic!("no node {name} in {nodes}"))
    }
}

/// An agent with its own data dir, joined under `name` with `public_ip`.
pub struct Agent {
    pub name: String,
    pub public_ip: String,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    log_dir: PathBuf,
    /// More `fogmesh-agent run` arguments.
    pub run_args: Vec<String>,
}

impl Agent {
    pub fn join_and_run(master: &Master, name: &str, public_ip: &str) -> Agent {
        Agent::join_and_run_in(master, name, public_ip, &master.dir.join(format!("agent-{name}")))
    }

    /// `join_and_run` with the agent's data in `data_dir`.
    pub fn join_and_run_in(master: &Master, name: &str, public_ip: &str, data_dir: &Path) -> Agent {
        let mut agent = Agent::join(master, name, public_ip, data_dir, &[]).unwrap_or_else(|out| panic!("join failed: {}", text(&out.stderr)));
        agent.start();
        agent
    }

    /// Joins (without starting); `extra` are more `join` arguments. The
    /// `join` output on refusal.
    /// With `--replace` in `extra`, the token is one made for replacing `name`.
    pub fn join(master: &Master, name: &str, public_ip: &str, data_dir: &Path, extra: &[&str]) -> Result<Agent, Output> {
        let token = if extra.contains(&"--replace") {
            master.cli_ok(&["token", "create", "--ttl", "10m", "--replace", name]).trim().to_string()
        } else {
            master.token()
        };
        Agent::join_with_token(master, &token, name, public_ip, data_dir, extra)
    }

    /// `join` with a given token.
    pub fn join_with_token(master: &Master, token: &str, name: &str, public_ip: &str, data_dir: &Path, extra: &[&str]) -> Result<Agent, Output> {
        let out = Command::new(bin("fogmesh-agent"))
            .args(["join", "--master", &master.address()])
            .env("FOGMESH_JOIN_TOKEN", token)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--public-ip", public_ip, "--name", name, "--label", "zone=test"])
            .args(extra)
            .output()
            .expect("run fogmesh-agent join");
        if !out.status.success() {
            return Err(out);
        }
        Ok(Agent { name: name.into(), public_ip: public_ip.into(), data_dir: data_dir.to_path_buf(), proc: None, log_dir: master.dir.clone(), run_args: vec![] })
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new(bin("fogmesh-agent"));
        cmd.arg("run").arg("--data-dir").arg(&self.data_dir).args(&self.run_args).env("RUST_LOG", "info");
        let n = std::fs::read_dir(&self.log_dir).map(|d| d.count()).unwrap_or(0);
        self.proc = Some(Proc::spawn(cmd, self.log_dir.join(format!("agent-{}-{n}.log", self.name))));
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        remove_node_containers(&self.name);
    }
}

/// `docker` CLI output, trimmed; panics if docker fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {args:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// IDs of running containers of a node (label fogmesh.node).
pub fn running_containers(node: &str) -> Vec<String> {
    let list = docker(&["ps", "-q", "--filter", &format!("label=fogmesh.node={node}")]);
    list.lines().map(String::from).collect()
}

/// `docker inspect` of replica 1 of `workload` of app `app` on `node`: the
/// running version if one runs (during an update the old one may still
/// exist beside it), else the newest.
pub fn inspect(node: &str, app: &str, workload: &str) -> Option<serde_json::Value> {
    let filters = [
        format!("label=fogmesh.node={node}"),
        format!("label=fogmesh.app-name={app}"),
        format!("label=fogmesh.workload={workload}"),
        "label=fogmesh.replica=1".to_string(),
    ];
    let mut args = vec!["ps", "-aq"];
    for f in &filters {
        args.extend(["--filter", f.as_str()]);
    }
    let ids = docker(&args);
    let mut found: Vec<serde_json::Value> = ids
        .lines()
        .filter_map(|id| {
            // The agent may replace the container between the two calls: then
            // it is simply not there (yet).
            let out = Command::new("docker").args(["inspect", id]).output().ok()?;
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            json.get(0).cloned()
        })
        .collect();
    found.sort_by_key(|c| (c["State"]["Running"] != true, std::cmp::Reverse(c["Created"].as_str().unwrap_or("").to_string())));
    found.into_iter().next()
}

/// Ids of all containers (any state) of `node`.
pub fn all_containers(node: &str) -> Vec<String> {
    let list = docker(&["ps", "-aq", "--filter", &format!("label=fogmesh.node={node}")]);
    list.lines().map(String::from).collect()
}

pub fn remove_node_containers(node: &str) {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=fogmesh.node={node}")])
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory for one test under the target dir.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = workspace().join("target/e2e").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// `fogmesh-agent simulate`: `count` simulated nodes in one process, joined
/// with one multi-use token, each with its own certificate and QUIC session.
pub struct Fleet {
    pub proc: Proc,
    pub prefix: String,
}

impl Fleet {
    pub fn start(master: &Master, prefix: &str, count: usize, ip_base: &str) -> Fleet {
        Fleet::start_with(master, prefix, count, ip_base, &[])
    }

    /// As `start`, with more `simulate` arguments.
    pub fn start_with(master: &Master, prefix: &str, count: usize, ip_base: &str, args: &[&str]) -> Fleet {
        let token = master.cli_ok(&["token", "create", "--ttl", "10m", "--uses", &count.to_string()]).trim().to_string();
        let mut cmd = Command::new(bin("fogmesh-agent"));
        cmd.args(["simulate", "--master", &master.address(), "--count", &count.to_string(), "--prefix", prefix, "--ip-base", ip_base])
            .arg("--data-dir")
            .arg(master.dir.join(format!("fleet-{prefix}")))
            .args(args)
            .env("FOGMESH_JOIN_TOKEN", token)
            .env("RUST_LOG", "warn");
        let proc = Proc::spawn(cmd, master.dir.join(format!("fleet-{prefix}.log")));
        let fleet = Fleet { proc, prefix: prefix.to_string() };
        wait_for(&format!("{count} simulated nodes ready"), Duration::from_secs(120), || {
            let nodes = master.cli_json(&["node", "list"]);
            let ready = nodes.as_array()?.iter().filter(|n| n["name"].as_str().is_some_and(|s| s.starts_with(prefix)) && n["state"] == "ready").count();
            (ready == count).then_some(())
        });
        fleet
    }
}

/// GET `url` with a short timeout; the body on a 2xx answer.
pub fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "3", url]).output().ok()?;
    out.status.success().then(|| text(&out.stdout))
}

/// Writes an ADT file under `dir` and returns its path.
pub fn write_adt(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write ADT");
    path
}

/// An ADT with one Edge node (`ip`) and one container on it.
/// `container` is the YAML of the container's `properties`, indented by 8.
pub fn edge_adt(ip: &str, workload: &str, properties: &str) -> String {
    format!(
        "tosca_definitions_version: tosca_simple_yaml_1_2\ntopology_template:\n  node_templates:\n    fog:\n      type: tosca.nodes.MiCADO.Edge\n      properties: {{public_ip: {ip}}}\n    {workload}:\n      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment\n      properties:\n{properties}      requirements: [{{host: fog}}]\n"
    )
}

/// `docker inspect` field `Id` of what `inspect` finds, or "".
pub fn container_id(node: &str, app: &str, workload: &str) -> String {
    inspect(node, app, workload).and_then(|c| c["Id"].as_str().map(String::from)).unwrap_or_default()
}

/// Environment of what `inspect` finds.
pub fn env_of(node: &str, app: &str, workload: &str) -> Vec<String> {
    inspect(node, app, workload)
        .and_then(|c| c["Config"]["Env"].as_array().map(|e| e.iter().filter_map(|v| v.as_str().map(String::from)).collect()))
        .unwrap_or_default()
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line; clock ticks are 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// An iptables rule that exists while this value lives.
pub struct CutOff {
    rule: Vec<String>,
}

impl CutOff {
    pub fn insert(rule: &[&str]) -> CutOff {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let out = Command::new("iptables").arg("-I").args(&rule).output().expect("run iptables");
        assert!(out.status.success(), "iptables -I {rule:?}: {}", text(&out.stderr));
        CutOff { rule }
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.rule).output();
    }
}

/// mosquitto from Debian with the setup `fogmesh-master issue-cert` writes
/// (TLS, client certificates under the cluster CA, fogmesh's ACL and CRL),
/// listening on 127.0.0.1:`port`. Start the master with
/// `--mqtt-crl` [`Mosquitto::crl_path`] to keep its CRL current.
pub struct Mosquitto {
    pub proc: Option<Proc>,
    pub conf: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl Mosquitto {
    /// Where the setup goes, for a master in `dir`.
    pub fn crl_path(dir: &Path) -> PathBuf {
        let certs = dir.join("mosquitto");
        std::fs::create_dir_all(&certs).expect("create the mosquitto folder");
        certs.join("crl.pem")
    }

    pub fn start(master: &Master, port: u16) -> Mosquitto {
        assert!(mosquitto_installed(), "mosquitto is needed: apt-get install mosquitto");
        let certs = master.dir.join("mosquitto");
        let out = Command::new(bin("fogmesh-master"))
            .args(["issue-cert", "--data-dir"])
            .arg(master.dir.join("master"))
            .args(["--name", "127.0.0.1", "--listen", &format!("127.0.0.1:{port}"), "--out-dir"])
            .arg(&certs)
            .output()
            .expect("run issue-cert");
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The generated setup, run as root here (the key is root's, mode 0600).
        let conf = certs.join("mosquitto.conf");
        let mut text = std::fs::read_to_string(&conf).expect("issue-cert wrote mosquitto.conf");
        text.push_str("user root\npersistence false\n");
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut m = Mosquitto { proc: None, conf, log: certs.join("mosquitto.log"), port };
        m.restart();
        m
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&self.conf);
        self.proc = Some(Proc::spawn(cmd, self.log.clone()));
        let port = self.port;
        wait_for("mosquitto listening", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
    }

    /// SIGHUP: mosquitto rereads its CRL.
    pub fn reload(&self) {
        let pid = self.proc.as_ref().expect("mosquitto runs").child.id();
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("run kill");
        assert!(status.success());
    }

    pub fn kill(&mut self) {
        self.proc.take();
    }
}

pub fn mosquitto_installed() -> bool {
    if Command::new("mosquitto").arg("-h").output().is_ok() {
        return true;
    }
    let _ = Command::new("sh").args(["-c", "apt-get install -y -qq mosquitto >/dev/null 2>&1"]).status();
    Command::new("mosquitto").arg("-h").output().is_ok()
}
