//! The mosquitto setup `fogmesh-master issue-cert` writes for an external
//! broker: the same rules as the embedded broker's door, in mosquitto's
//! terms. A client's user name and client id are its certificate's name
//! (a node's name, or the master's), the ACL lets a node write only its
//! metrics topic and read only its acks topic, and the CRL the master keeps
//! current (`serve --mqtt-crl`) shuts out revoked certificates.

use std::net::SocketAddr;
use std::path::Path;

use fogmesh_common::metrics::batch::{acks_topic, metrics_topic};
use fogmesh_common::pki::MASTER_SERVER_NAME;

/// `mosquitto.conf` for a listener on `listen`, reading its files from `dir`.
pub fn config(dir: &Path, listen: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# mosquitto for fogmesh, written by `fogmesh-master issue-cert`.\n\
         # TLS with client certificates under the cluster CA. A client's user name\n\
         # and client id are its certificate's name, so no client can act as another.\n\
         # mosquitto rereads crl.pem on SIGHUP; `fogmesh-master serve --mqtt-crl {d}/crl.pem`\n\
         # keeps it current. Run mosquitto as a user that can read server.key (mode 0600).\n\
         listener {port} {host}\n\
         cafile {d}/ca.pem\n\
         certfile {d}/server.pem\n\
         keyfile {d}/server.key\n\
         crlfile {d}/crl.pem\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         use_username_as_clientid true\n\
         allow_anonymous false\n\
         acl_file {d}/acl\n",
        port = listen.port(),
        host = listen.ip(),
    )
}

/// The ACL: the master reads every node's metrics and writes their acks; a
/// node (`%u`, its certificate's name) writes its metrics and reads its acks.
pub fn acl() -> String {
    format!(
        "# fogmesh topics, written by `fogmesh-master issue-cert`.\n\
         user {MASTER_SERVER_NAME}\n\
         topic read {}\n\
         topic write {}\n\
         \n\
         pattern write {}\n\
         pattern read {}\n",
        metrics_topic("+"),
        acks_topic("+"),
        metrics_topic("%u"),
        acks_topic("%u"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_node_gets_only_its_own_topics_and_the_master_all() {
        let acl = super::acl();
        let lines: Vec<&str> = acl.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "user fogmesh-master",
                "topic read fogmesh/v1/nodes/+/metrics",
                "topic write fogmesh/v1/nodes/+/acks",
                "pattern write fogmesh/v1/nodes/%u/metrics",
                "pattern read fogmesh/v1/nodes/%u/acks",
            ]
        );
        let conf = super::config(std::path::Path::new("/etc/fm"), "127.0.0.1:8883".parse().unwrap());
        for line in ["listener 8883 127.0.0.1", "crlfile /etc/fm/crl.pem", "use_identity_as_username true", "use_username_as_clientid true", "acl_file /etc/fm/acl", "require_certificate true"] {
            assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
        }
    }
}
