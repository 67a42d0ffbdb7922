//! The node registry: join tokens, joining (token + CSR -> node certificate),
//! the identity check of a connecting agent, declared and removed nodes, and
//! what agents report (heartbeats, acks, status).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use fogmesh_common::pki::{cert_fingerprint_der, cert_fingerprint_pem, constant_time_eq, hash_secret, node_name_from_cert, JoinToken};
use fogmesh_common::wire::{Hello, JoinRequest, JoinResponse, NodeStatus, PROTOCOL_VERSION};

use crate::cluster::Cluster;
use crate::failure::{check_name, Failure};
use crate::model::{now_ms, DeclareNode, NodeRecord, NodeView, TokenCreated, TokenRecord};

/// Node certificates live this long; agents rejoin or renew before that.
const NODE_CERT_DAYS: u32 = 365;
/// Longest join token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Cluster {
    pub async fn create_token(&self, ttl: Duration) -> Result<TokenCreated, Failure> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Failure::BadRequest(format!(
                "token lifetime must be between 1 second and {} days",
                MAX_TOKEN_TTL.as_secs() / 86400
            )));
        }
        let token = JoinToken::generate(&self.ca.fingerprint())?;
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let record = TokenRecord { secret_hash: hash_secret(&token.secret), expires_ms, used: false };
        self.store.put_token(&token.id, &record)?;
        self.store.flush().await?;
        tracing::info!(token_id = %token.id, expires_ms, "join token created");
        Ok(TokenCreated { token: token.to_string(), expires_ms })
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
        let Some(mut record) = self.store.token(&token.id).map_err(internal)? else {
            return Err("unknown join token (create one with `fogmesh token create`)".into());
        };
        if !constant_time_eq(&hash_secret(&token.secret), &record.secret_hash) {
            tracing::warn!(token_id = %token.id, "join with a forged token secret");
            return Err("invalid join token: its secret does not match".into());
        }
        if record.used {
            return Err("this join token was already used; tokens are single-use".into());
        }
        if record.expires_ms < now_ms() {
            return Err("this join token has expired; create a new one".into());
        }
        let public_ip: IpAddr = req
            .public_ip
            .parse()
            .map_err(|_| format!("public IP '{}' is not an IP address", req.public_ip))?;
        let public_ip = public_ip.to_string();
        let name = self.choose_node_name(req.name.as_deref(), &public_ip).map_err(|f| f.to_string())?;

        // Single use even if a later step fails.
        record.used = true;
        self.store.put_token(&token.id, &record).map_err(internal)?;
        self.store.flush().await.map_err(internal)?;

        let cert_pem = self.ca.sign_node_csr(&req.csr_pem, &name, NODE_CERT_DAYS).map_err(|e| format!("bad certificate request: {e}"))?;
        let fingerprint = cert_fingerprint_pem(&cert_pem).map_err(|e| format!("the master issued an unreadable certificate: {e}"))?;
        let previous = self.store.node(&name).map_err(internal)?;
        if let Some(old) = previous.as_ref().and_then(|n| n.cert_fingerprint.as_ref()) {
            // A node that joins again replaces its old identity.
            self.store.revoke(old).map_err(internal)?;
        }
        let node = NodeRecord {
            name: name.clone(),
            public_ip,
            labels: req.labels.clone(),
            capacity: None,
            runtime_version: None,
            agent_version: None,
            cert_fingerprint: Some(fingerprint),
            last_seen_ms: Some(now_ms()),
        };
        self.store.put_node(&node).map_err(internal)?;
        self.reschedule().await.map_err(internal)?;
        tracing::info!(node = %name, public_ip = %node.public_ip, "node joined");
        Ok(JoinResponse { node_name: name, cert_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    /// The name a joining node gets: the declared node with its public IP, else
    /// the name it asked for, else one made from the IP.
    fn choose_node_name(&self, asked: Option<&str>, public_ip: &str) -> Result<String, Failure> {
        let nodes = self.store.nodes()?;
        if let Some(same_ip) = nodes.iter().find(|n| n.public_ip == public_ip) {
            return match asked {
                Some(a) if a != same_ip.name && same_ip.cert_fingerprint.is_some() => Err(Failure::Conflict(format!(
                    "public IP {public_ip} is already registered as node '{}'; remove it first (fogmesh node remove {})",
                    same_ip.name, same_ip.name
                ))),
                _ => Ok(same_ip.name.clone()),
            };
        }
        let name = match asked {
            Some(a) => a.to_string(),
            None => format!("node-{}", public_ip.replace(['.', ':'], "-")),
        };
        check_name("node", &name)?;
        if let Some(other) = nodes.iter().find(|n| n.name == name) {
            return Err(Failure::Conflict(format!(
                "node name '{name}' is taken by the node with public IP {}",
                other.public_ip
            )));
        }
        Ok(name)
    }

    /// Checks that a connecting agent is the node its certificate names and
    /// records what it reports about itself. Returns the node name.
    pub async fn hello(&self, cert_der: Option<&[u8]>, hello: &Hello) -> Result<String, String> {
        check_protocol(hello.protocol_version)?;
        let Some(der) = cert_der else {
            return Err("no client certificate: join first with a token (fogmesh-agent join)".into());
        };
        let fingerprint = cert_fingerprint_der(der);
        let internal = |e: anyhow::Error| {
            tracing::error!(error = %format!("{e:#}"), "hello failed inside the master");
            "the master failed to process the connection; see its log".to_string()
        };
        if self.store.is_revoked(&fingerprint).map_err(internal)? {
            return Err("this node's certificate was revoked (the node was removed or joined again); join again with a new token".into());
        }
        let cert_name = node_name_from_cert(der).ok_or("the client certificate names no node")?;
        if cert_name != hello.node_name {
            return Err(format!("the certificate is for node '{cert_name}', but the agent says it is '{}'", hello.node_name));
        }
        let Some(mut node) = self.store.node(&cert_name).map_err(internal)? else {
            return Err(format!("node '{cert_name}' is not registered; join again with a new token"));
        };
        if node.cert_fingerprint.as_deref() != Some(fingerprint.as_str()) {
            return Err(format!("this certificate is not the current one of node '{cert_name}'; join again with a new token"));
        }
        if hello.public_ip != node.public_ip {
            tracing::warn!(node = %cert_name, registered = %node.public_ip, reported = %hello.public_ip, "agent reports another public IP than it joined with; keeping the registered one");
        }
        node.labels = hello.labels.clone();
        node.capacity = Some(hello.capacity.clone());
        node.runtime_version = Some(hello.runtime_version.clone());
        node.agent_version = Some(hello.agent_version.clone());
        node.last_seen_ms = Some(now_ms());
        self.store.put_node(&node).map_err(internal)?;
        Ok(cert_name)
    }

    pub async fn declare_node(&self, req: &DeclareNode) -> Result<NodeRecord, Failure> {
        let ip: IpAddr = req
            .public_ip
            .parse()
            .map_err(|_| Failure::BadRequest(format!("public IP '{}' is not an IP address", req.public_ip)))?;
        let public_ip = ip.to_string();
        let nodes = self.store.nodes()?;
        if let Some(n) = nodes.iter().find(|n| n.public_ip == public_ip) {
            return Err(Failure::Conflict(format!("public IP {public_ip} is already known as node '{}'", n.name)));
        }
        let name = req.name.clone().unwrap_or_else(|| format!("node-{}", public_ip.replace(['.', ':'], "-")));
        check_name("node", &name)?;
        if nodes.iter().any(|n| n.name == name) {
            return Err(Failure::Conflict(format!("node name '{name}' is taken")));
        }
        let node = NodeRecord {
            name,
            public_ip,
            labels: vec![],
            capacity: None,
            runtime_version: None,
            agent_version: None,
            cert_fingerprint: None,
            last_seen_ms: None,
        };
        self.store.put_node(&node)?;
        self.reschedule().await?;
        Ok(node)
    }

    /// Removes a node and revokes its certificate; its agent is refused from
    /// now on. A connected agent is first told to remove its containers.
    pub async fn remove_node(&self, name: &str) -> Result<(), Failure> {
        let Some(node) = self.store.node(name)? else {
            return Err(Failure::NotFound(format!("no node named '{name}'")));
        };
        if let Some(fp) = &node.cert_fingerprint {
            self.store.revoke(fp)?;
        }
        self.store.remove_node(name)?;
        self.reschedule().await?;
        // Its connection, if any, must learn that it was removed.
        self.wake_connections();
        tracing::info!(node = %name, "node removed and its certificate revoked");
        Ok(())
    }

    pub fn node_views(&self) -> Result<Vec<NodeView>, Failure> {
        let mut views = Vec::new();
        for node in self.store.nodes()? {
            let desired = self.store.desired(&node.name)?;
            let observed = self.store.observed(&node.name)?;
            let running = observed
                .containers
                .iter()
                .filter(|c| c.state == fogmesh_common::wire::ContainerState::Running)
                .count();
            views.push(NodeView {
                state: self.node_state(&node),
                containers_desired: desired.containers.len(),
                containers_running: running,
                desired_generation: desired.generation,
                acked_generation: self.store.acked(&node.name)?,
                name: node.name,
                public_ip: node.public_ip,
                last_seen_ms: node.last_seen_ms,
                labels: node.labels,
                capacity: node.capacity,
                runtime_version: node.runtime_version,
            });
        }
        Ok(views)
    }

    pub fn record_seen(&self, node: &str) -> anyhow::Result<()> {
        if let Some(mut n) = self.store.node(node)? {
            n.last_seen_ms = Some(now_ms());
            self.store.put_node(&n)?;
        }
        Ok(())
    }

    pub async fn record_ack(&self, node: &str, generation: u64) -> anyhow::Result<()> {
        if generation > self.store.acked(node)? {
            self.store.set_acked(node, generation)?;
            self.store.flush().await?;
        }
        Ok(())
    }

    pub fn record_status(&self, node: &str, status: &NodeStatus) -> anyhow::Result<()> {
        self.store.set_observed(node, status)?;
        self.record_seen(node)
    }
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
