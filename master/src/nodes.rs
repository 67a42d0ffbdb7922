//! The node registry: join tokens, joining (token + CSR -> node certificate),
//! the identity check of a connecting agent, declared and removed nodes, and
//! what agents report (heartbeats, acks, status).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use fogmesh_common::pki::{cert_fingerprint_der, cert_fingerprint_pem, cert_serial_pem, cert_validity, constant_time_eq, hash_secret, node_name_from_cert, JoinToken};
use fogmesh_common::wire::{Hello, JoinRequest, JoinResponse, NodeStatus, Refusal, PROTOCOL_VERSION};

use crate::cluster::Cluster;
use crate::failure::{check_name, Failure};
use crate::model::{now_ms, DeclareNode, LabelNode, NodeRecord, PreviousCert, NodeState, NodeSummary, NodeView, TokenCreated, TokenRecord};
use crate::store::Revocation;

/// Longest join token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most agents one token may join (a fleet rollout).
const MAX_TOKEN_USES: u32 = 100_000;

impl Cluster {
    /// A join token; with `replace`, one that only an agent taking that
    /// joined node's place may use, once.
    pub async fn create_token(&self, ttl: Duration, uses: u32, replace: Option<String>) -> Result<TokenCreated, Failure> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Failure::BadRequest(format!(
                "token lifetime must be between 1 second and {} days",
                MAX_TOKEN_TTL.as_secs() / 86400
            )));
        }
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(Failure::BadRequest(format!("token uses must be between 1 and {MAX_TOKEN_USES}")));
        }
        if let Some(node) = &replace {
            if uses != 1 {
                return Err(Failure::BadRequest(format!("a token that replaces node '{node}' is for one agent: --uses must be 1")));
            }
            match self.store.with_node(node, |n| n.cert_fingerprint.is_some()) {
                None => return Err(Failure::NotFound(format!("no node named '{node}' to replace"))),
                Some(false) => return Err(Failure::BadRequest(format!("node '{node}' has no agent yet: its agent joins with a plain token, no --replace"))),
                Some(true) => {}
            }
        }
        let token = JoinToken::generate(&self.ca.fingerprint())?;
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let record = TokenRecord { secret_hash: hash_secret(&token.secret), expires_ms, uses_left: uses, replace: replace.clone() };
        self.store.put_token(&token.id, &record)?;
        self.store.flush().await?;
        tracing::info!(token_id = %token.id, expires_ms, uses, replace = replace.as_deref().unwrap_or("-"), "join token created");
        Ok(TokenCreated { token: token.to_string(), expires_ms, uses })
    }

    /// Validates a join request and issues the node certificate. The error is
    /// the refusal reason sent to the agent.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResponse, String> {
        check_protocol(req.protocol_version)?;
        let token = JoinToken::from_str(req.token.trim()).map_err(|e| format!("malformed join token: {e}"))?;
        if token.ca_fingerprint != self.ca.fingerprint() {
            return Err("the join token belongs to another cluster (its CA fingerprint differs)".into());
        }
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %format!("{e:#}"), "join failed inside the master");
            "the master failed to process the join; see its log".to_string()
        };
        let Some(record) = self.store.token(&token.id).map_err(internal)? else {
            return Err("unknown join token (create one with `fogmesh token create`)".into());
        };
        if !constant_time_eq(&hash_secret(&token.secret), &record.secret_hash) {
            tracing::warn!(token_id = %token.id, "join with a forged token secret");
            return Err("invalid join token: its secret does not match".into());
        }
        if record.uses_left == 0 {
            return Err("this join token was already used up; create a new one with `fogmesh token create`".into());
        }
        if record.expires_ms < now_ms() {
            return Err("this join token has expired; create a new one".into());
        }
        let public_ip: IpAddr = req
            .public_ip
            .parse()
            .map_err(|_| format!("public IP '{}' is not an IP address", req.public_ip))?;
        let public_ip = public_ip.to_string();
        // Joins change the registry: one at a time, like every write.
        let _write = self.write_lock().await;
        // Read again under the lock: a parallel join may have used it up.
        let Some(mut record) = self.store.token(&token.id).map_err(internal)?.filter(|r| r.uses_left > 0) else {
            return Err("this join token was already used up; create a new one with `fogmesh token create`".into());
        };
        let name = self.choose_node_name(req.name.as_deref(), &public_ip, req.replace).map_err(|f| f.to_string())?;
        check_replace_token(record.replace.as_deref(), req.replace, &name)?;

        // Used even if a later step fails.
        record.uses_left -= 1;
        self.store.put_token(&token.id, &record).map_err(internal)?;
        self.store.flush().await.map_err(internal)?;

        let cert_pem = self.ca.sign_node_csr_for(&req.csr_pem, &name, self.config.node_cert_lifetime).map_err(|e| format!("bad certificate request: {e}"))?;
        let fingerprint = cert_fingerprint_pem(&cert_pem).map_err(|e| format!("the master issued an unreadable certificate: {e}"))?;
        let previous = self.store.node(&name).map_err(internal)?;
        if let Some(old) = previous.as_ref().filter(|n| n.cert_fingerprint.is_some()) {
            // Only with --replace (checked above): the old agent is refused from now on.
            self.revoke_certificates(old, Revocation::Replaced).map_err(internal)?;
            tracing::warn!(node = %name, "node joined again with --replace; its previous certificate is revoked");
        }
        let node = NodeRecord {
            name: name.clone(),
            public_ip,
            labels: req.labels.clone(),
            reported_labels: req.labels.clone(),
            capacity: None,
            runtime_version: None,
            agent_version: None,
            cert_fingerprint: Some(fingerprint),
            cert_pem: Some(cert_pem.clone()),
            previous_cert: None,
            last_seen_ms: Some(now_ms()),
        };
        self.store.put_node(&node).map_err(internal)?;
        self.store.flush().await.map_err(internal)?;
        // Its desired state comes from the next coalesced pass (it cannot
        // connect before this answer anyway): a pass per join made joining
        // N nodes cost O(N^2) (10,000 nodes slowed to 16 joins/s).
        self.reschedule_soon();
        if previous.as_ref().is_some_and(|n| n.cert_fingerprint.is_some()) {
            // A connection of the replaced agent must learn that it is revoked
            // (waking every connection for every join would cost O(N) each).
            self.note_revocation();
        }
        tracing::info!(node = %name, public_ip = %node.public_ip, "node joined");
        Ok(JoinResponse { node_name: name, cert_pem, ca_pem: self.ca.cert_pem().to_string(), metrics: self.config.metrics.clone() })
    }

    /// The name a joining node gets: the declared node with its public IP, else
    /// the name it asked for, else one made from the IP. A node that already
    /// joined with this public IP is taken over only with `replace`.
    fn choose_node_name(&self, asked: Option<&str>, public_ip: &str, replace: bool) -> Result<String, Failure> {
        if let Some(same_ip) = self.store.node_by_ip(public_ip)? {
            let joined = same_ip.cert_fingerprint.is_some();
            return match asked {
                Some(a) if a != same_ip.name && joined => Err(Failure::Conflict(format!(
                    "public IP {public_ip} is already registered as node '{}'; join as that node with --name {} --replace, or remove it first (fogmesh node remove {})",
                    same_ip.name, same_ip.name, same_ip.name
                ))),
                _ if joined && !replace => Err(Failure::Conflict(format!(
                    "public IP {public_ip} is already registered as node '{}', whose agent joined before; to take its place (the old agent is then refused), join again with --replace",
                    same_ip.name
                ))),
                _ => Ok(same_ip.name.clone()),
            };
        }
        let name = match asked {
            Some(a) => a.to_string(),
            None => format!("node-{}", public_ip.replace(['.', ':'], "-")),
        };
        check_name("node", &name)?;
        if let Some(other) = self.store.node(&name)? {
            return Err(Failure::Conflict(format!(
                "node name '{name}' is taken by the node with public IP {}",
                other.public_ip
            )));
        }
        Ok(name)
    }

    /// Checks that a connecting agent is the node its certificate names and
    /// records what it reports about itself. Returns the node name, or the
    /// refusal reason and its kind.
    pub async fn hello(&self, cert_der: Option<&[u8]>, hello: &Hello) -> Result<String, (String, Refusal)> {
        let other = |reason: String| (reason, Refusal::Other);
        check_protocol(hello.protocol_version).map_err(other)?;
        let Some(der) = cert_der else {
            return Err(other("no client certificate: join first with a token (fogmesh-agent join)".into()));
        };
        let cert_name = self.node_of_certificate(der)?;
        if cert_name != hello.node_name {
            return Err(other(format!("the certificate is for node '{cert_name}', but the agent says it is '{}'", hello.node_name)));
        }
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %format!("{e:#}"), "hello failed inside the master");
            ("the master failed to process the connection; see its log".to_string(), Refusal::Other)
        };
        let Some(node) = self.store.node(&cert_name).map_err(internal)? else {
            return Err(other(format!("node '{cert_name}' is not registered; join again with a new token")));
        };
        if hello.public_ip != node.public_ip {
            tracing::warn!(node = %cert_name, registered = %node.public_ip, reported = %hello.public_ip, "agent reports another public IP than it joined with; keeping the registered one");
        }
        if hello.labels != node.reported_labels {
            tracing::warn!(node = %cert_name, reported = ?hello.labels, kept = ?node.labels, "agent reports other labels than before; a node's labels come from its join and the operator (fogmesh node label), keeping them");
        }
        let fresh = (Some(hello.capacity.clone()), Some(hello.runtime_version.clone()), Some(hello.agent_version.clone()));
        if node.reported_labels != hello.labels || (node.capacity.clone(), node.runtime_version.clone(), node.agent_version.clone()) != fresh {
            // In place: a `node remove` or `--replace` racing this connect wins.
            let updated = self
                .store
                .update_node(&cert_name, |n| {
                    n.reported_labels = hello.labels.clone();
                    (n.capacity, n.runtime_version, n.agent_version) = fresh;
                    n.last_seen_ms = Some(now_ms());
                })
                .map_err(internal)?;
            if !updated {
                return Err(other(format!("node '{cert_name}' was removed while it connected")));
            }
            self.store.flush_soon();
        }
        self.record_seen(&cert_name);
        Ok(cert_name)
    }

    /// The node a (CA-verified) client certificate belongs to, if it is that
    /// node's current certificate: not revoked, not replaced, node still
    /// registered. Every door asks this, at connect and after revocations.
    pub fn node_of_certificate(&self, der: &[u8]) -> Result<String, (String, Refusal)> {
        let other = |reason: String| (reason, Refusal::Other);
        let fingerprint = cert_fingerprint_der(der);
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %format!("{e:#}"), "certificate check failed inside the master");
            other("the master failed to check the certificate; see its log".to_string())
        };
        match self.store.revocation(&fingerprint).map_err(internal)? {
            Some(Revocation::Removed) => {
                return Err(("this node was removed from the cluster and its certificate revoked; join again with a new token".into(), Refusal::Revoked));
            }
            Some(Revocation::Replaced) => {
                return Err(("another agent joined as this node (--replace); this agent's certificate is revoked".into(), Refusal::Replaced));
            }
            None => {}
        }
        let name = node_name_from_cert(der).ok_or_else(|| other("the client certificate names no node".into()))?;
        match self.store.with_node(&name, |n| n.holds_cert(&fingerprint)) {
            None => Err(other(format!("node '{name}' is not registered; join again with a new token"))),
            Some(false) => Err(other(format!("this certificate is not the current one of node '{name}'; join again with a new token"))),
            Some(true) => Ok(name),
        }
    }

    pub async fn declare_node(&self, req: &DeclareNode) -> Result<NodeRecord, Failure> {
        let ip: IpAddr = req
            .public_ip
            .parse()
            .map_err(|_| Failure::BadRequest(format!("public IP '{}' is not an IP address", req.public_ip)))?;
        let public_ip = ip.to_string();
        let name = req.name.clone().unwrap_or_else(|| format!("node-{}", public_ip.replace(['.', ':'], "-")));
        check_name("node", &name)?;
        let _write = self.write_lock().await;
        if let Some(n) = self.store.node_by_ip(&public_ip)? {
            return Err(Failure::Conflict(format!("public IP {public_ip} is already known as node '{}'", n.name)));
        }
        if self.store.node(&name)?.is_some() {
            return Err(Failure::Conflict(format!("node name '{name}' is taken")));
        }
        let node = NodeRecord::declared(&name, &public_ip);
        self.store.put_node(&node)?;
        self.reschedule_locked().await?;
        Ok(node)
    }

    /// Removes a node and revokes its certificate; its agent is refused from
    /// now on. A connected agent is first told to remove its containers.
    pub async fn remove_node(&self, name: &str) -> Result<(), Failure> {
        let _write = self.write_lock().await;
        let Some(node) = self.store.node(name)? else {
            return Err(Failure::NotFound(format!("no node named '{name}'")));
        };
        self.revoke_certificates(&node, Revocation::Removed)?;
        self.store.remove_node(name)?;
        self.reschedule_locked().await?;
        // Its sessions, if any, must learn that it was removed.
        self.note_revocation();
        tracing::info!(node = %name, "node removed and its certificate revoked");
        Ok(())
    }

    /// Signs a new certificate for the key of `csr_pem`, for the node whose
    /// certificate (`presented`, a fingerprint) the connection holds; the
    /// current one becomes the previous (still good until the next renewal).
    /// Revocation wins: a removed or replaced node's certificate renews nothing.
    /// Stored durably before it returns: an agent that got the certificate
    /// must find the master knowing it after any crash.
    pub async fn renew_certificate(&self, node: &str, presented: &str, csr_pem: &str) -> Result<String, String> {
        let internal = |e: anyhow::Error| {
            tracing::error!(%node, error = %format!("{e:#}"), "certificate renewal failed inside the master");
            "the master failed to renew the certificate; see its log".to_string()
        };
        let cert_pem = self.ca.sign_node_csr_for(csr_pem, node, self.config.node_cert_lifetime).map_err(|e| format!("bad certificate request: {e}"))?;
        let fingerprint = cert_fingerprint_pem(&cert_pem).map_err(|e| internal(e.into()))?;
        let mut held = false;
        let updated = self
            .store
            .update_node(node, |n| {
                held = n.holds_cert(presented);
                if held {
                    if let (Some(fp), Some(pem)) = (n.cert_fingerprint.take(), n.cert_pem.take()) {
                        n.previous_cert = Some(PreviousCert { fingerprint: fp, pem });
                    }
                    n.cert_fingerprint = Some(fingerprint.clone());
                    n.cert_pem = Some(cert_pem.clone());
                }
            })
            .map_err(internal)?;
        if !updated || !held {
            return Err(format!("node '{node}' no longer holds this certificate; join again with a new token"));
        }
        self.store.flush().await.map_err(internal)?;
        tracing::info!(%node, "node certificate renewed");
        Ok(cert_pem)
    }

    /// Revokes a node's current and previous certificates.
    fn revoke_certificates(&self, node: &NodeRecord, why: Revocation) -> anyhow::Result<()> {
        let current = node.cert_fingerprint.as_deref().zip(node.cert_pem.as_deref());
        let previous = node.previous_cert.as_ref().map(|p| (p.fingerprint.as_str(), p.pem.as_str()));
        for (fingerprint, pem) in current.into_iter().chain(previous) {
            self.store.revoke(fingerprint, why, cert_serial_pem(pem).ok())?;
        }
        Ok(())
    }

    /// The operator's word on a node's labels (`fogmesh node label`): set
    /// and removed under the write lock, then placement follows them.
    pub async fn label_node(&self, name: &str, change: &LabelNode) -> Result<NodeRecord, Failure> {
        for (key, value) in &change.set {
            check_label(key, Some(value))?;
        }
        for key in &change.remove {
            check_label(key, None)?;
        }
        let _write = self.write_lock().await;
        let updated = self.store.update_node(name, |n| {
            let mut labels: std::collections::BTreeMap<String, String> = n.labels.drain(..).collect();
            for key in &change.remove {
                labels.remove(key);
            }
            labels.extend(change.set.iter().map(|(k, v)| (k.clone(), v.clone())));
            n.labels = labels.into_iter().collect();
        })?;
        if !updated {
            return Err(Failure::NotFound(format!("no node named '{name}'")));
        }
        self.reschedule_locked().await?;
        let node = self.store.node(name)?.ok_or_else(|| Failure::NotFound(format!("no node named '{name}'")))?;
        tracing::info!(node = %name, labels = ?node.labels, "node labels changed by the operator");
        Ok(node)
    }

    /// The fleet in counts; reads only the in-memory copies.
    pub fn node_summary(&self) -> Result<NodeSummary, Failure> {
        let mut sum = NodeSummary::default();
        for n in self.node_snapshots()? {
            sum.nodes += 1;
            match n.state {
                NodeState::Ready => sum.ready += 1,
                NodeState::Offline => sum.offline += 1,
                NodeState::Pending => sum.pending += 1,
            }
            sum.containers_desired += n.desired.containers.len();
            sum.containers_running += n.running_containers();
            if n.acked < n.desired.generation {
                sum.not_acked += 1;
            }
            for condition in &n.observed.conditions {
                *sum.conditions.entry(condition.kind.clone()).or_default() += 1;
            }
        }
        Ok(sum)
    }

    pub fn node_views(&self) -> Result<Vec<NodeView>, Failure> {
        let now = now_ms();
        // The agent's conditions, and the master's own word on its metrics
        // (from counters in memory: nothing stored).
        let conditions = |n: &crate::rollout::NodeSnapshot| {
            let mut all = n.observed.conditions.clone();
            all.extend(self.ingest.get().and_then(|ingest| ingest.refusal_condition(&n.node.name, now)));
            all
        };
        let views = self.node_snapshots()?.into_iter().map(|n| NodeView {
            state: n.state,
            last_seen_ms: self.last_seen(&n.node),
            containers_desired: n.desired.containers.len(),
            containers_running: n.running_containers(),
            desired_generation: n.desired.generation,
            acked_generation: n.acked,
            conditions: conditions(&n),
            labels: n.node.labels.iter().cloned().collect(),
            cert_expires_ms: n.node.cert_pem.as_deref().and_then(|pem| cert_validity(pem).ok()).map(|(_, not_after)| unix_ms(not_after)),
            name: n.node.name.clone(),
            public_ip: n.node.public_ip.clone(),
            capacity: n.node.capacity.clone(),
            runtime_version: n.node.runtime_version.clone(),
            agent_version: n.node.agent_version.clone(),
        });
        Ok(views.collect())
    }

    /// An agent acked a generation: stored without waiting for the disk
    /// (the agent resends its generation at every connect anyway).
    pub fn record_ack(&self, node: &str, generation: u64) -> anyhow::Result<()> {
        self.record_seen(node);
        if generation > self.store.acked(node)? {
            self.store.set_acked(node, generation)?;
            self.store.flush_soon();
            self.note_change();
        }
        Ok(())
    }

    /// What an agent observes; stored without waiting for the disk.
    pub fn record_status(&self, node: &str, status: &NodeStatus) -> anyhow::Result<()> {
        self.record_seen(node);
        self.store.set_observed(node, status)?;
        self.store.flush_soon();
        self.note_change();
        Ok(())
    }
}

/// A join with `--replace` needs a token made for the node it replaces,
/// and such a token replaces only that node.
fn check_replace_token(made_for: Option<&str>, replace: bool, name: &str) -> Result<(), String> {
    match (made_for, replace) {
        (None, false) => Ok(()),
        (Some(node), true) if node == name => Ok(()),
        (None, true) => Err(format!("--replace needs a token made for the node it replaces: fogmesh token create --replace {name}")),
        (Some(node), true) => Err(format!("this token replaces node '{node}', not '{name}'")),
        (Some(node), false) => Err(format!("this token is for an agent that replaces node '{node}': join with --replace")),
    }
}

/// Label keys and values: what the scheduler and ADTs match on, so
/// printable and short (like Kubernetes labels, with dots and slashes in keys).
fn check_label(key: &str, value: Option<&str>) -> Result<(), Failure> {
    let key_ok = !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !key_ok {
        return Err(Failure::BadRequest(format!("label key '{key}' is not valid: use 1-253 letters, digits, '-', '_', '.' and '/'")));
    }
    if let Some(value) = value {
        let ok = value.len() <= 63 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(Failure::BadRequest(format!("label value '{value}' of '{key}' is not valid: use at most 63 letters, digits, '-', '_' and '.'")));
        }
    }
    Ok(())
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn check_protocol(version: u32) -> Result<(), String> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "the agent speaks fogmesh protocol {version}, this master speaks {PROTOCOL_VERSION}; install matching versions"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{check_label, check_replace_token};

    #[test]
    fn replacing_needs_a_token_made_for_that_node() {
        assert_eq!(check_replace_token(None, false, "fog"), Ok(()));
        assert_eq!(check_replace_token(Some("fog"), true, "fog"), Ok(()));
        assert!(check_replace_token(None, true, "fog").unwrap_err().contains("fogmesh token create --replace fog"));
        assert!(check_replace_token(Some("cam"), true, "fog").unwrap_err().contains("replaces node 'cam', not 'fog'"));
        assert!(check_replace_token(Some("fog"), false, "fog").unwrap_err().contains("join with --replace"));
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("fogmesh.node-set", Some("cams")).is_ok());
        assert!(check_label("zone", Some("")).is_ok());
        assert!(check_label("", Some("x")).is_err());
        assert!(check_label("zone", Some("a b")).is_err());
        assert!(check_label("zo ne", None).is_err());
    }
}
