//! Kubernetes-style `livenessProbe` / `readinessProbe` properties ->
//! the probe the agent runs (exec, httpGet or tcpSocket, with timings).

use serde_json::Value;

use crate::wire::{Probe, ProbeAction};

/// Reads a probe as written in an ADT; the error names what is wrong.
pub fn parse_probe(v: &Value) -> Result<Probe, String> {
    let obj = v.as_object().ok_or("must be a mapping with exec, httpGet or tcpSocket")?;
    let actions: Vec<&str> = ["exec", "httpGet", "tcpSocket"].into_iter().filter(|k| obj.contains_key(*k)).collect();
    let action = match actions.as_slice() {
        ["exec"] => {
            let command = obj["exec"].get("command").and_then(Value::as_array).ok_or("exec needs a command list")?;
            let command: Vec<String> = command.iter().map(scalar).collect::<Option<_>>().ok_or("exec command entries must be strings")?;
            if command.is_empty() {
                return Err("exec command is empty".into());
            }
            ProbeAction::Exec(command)
        }
        ["httpGet"] => {
            let http = &obj["httpGet"];
            let path = http.get("path").map(|p| scalar(p).ok_or("httpGet path must be a string")).transpose()?.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                return Err(format!("httpGet path '{path}' must start with /"));
            }
            ProbeAction::Http { port: port(http.get("port"), "httpGet")?, path }
        }
        ["tcpSocket"] => ProbeAction::Tcp { port: port(obj["tcpSocket"].get("port"), "tcpSocket")? },
        [] => return Err("needs one of exec, httpGet or tcpSocket".into()),
        more => return Err(format!("has {} checks ({}); give exactly one", more.len(), more.join(", "))),
    };
    Ok(Probe {
        action,
        initial_delay_ms: seconds(obj, "initialDelaySeconds", 0)? * 1000,
        period_ms: seconds(obj, "periodSeconds", 10)?.max(1) * 1000,
        timeout_ms: seconds(obj, "timeoutSeconds", 1)?.max(1) * 1000,
        failure_threshold: seconds(obj, "failureThreshold", 3)?.max(1) as u32,
        success_threshold: seconds(obj, "successThreshold", 1)?.max(1) as u32,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn port(v: Option<&Value>, what: &str) -> Result<u16, String> {
    let v = v.ok_or_else(|| format!("{what} needs a port"))?;
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{what} port must be a number (named ports are not supported), found {v}"))?;
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("{what} port {n} is out of range 1-65535"))
}

fn seconds(obj: &serde_json::Map<String, Value>, key: &str, default: u64) -> Result<u64, String> {
    match obj.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| *n <= 86_400)
            .ok_or_else(|| format!("{key} must be a whole number of seconds up to 86400, found {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_probes() {
        let p = parse_probe(&json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2, "failureThreshold": 1})).unwrap();
        assert_eq!(p.action, ProbeAction::Http { port: 8080, path: "/healthz".into() });
        assert_eq!((p.period_ms, p.timeout_ms, p.failure_threshold, p.success_threshold), (2000, 1000, 1, 1));
        let p = parse_probe(&json!({"exec": {"command": ["cat", "/tmp/ok"]}, "initialDelaySeconds": "3"})).unwrap();
        assert_eq!(p.action, ProbeAction::Exec(vec!["cat".into(), "/tmp/ok".into()]));
        assert_eq!(p.initial_delay_ms, 3000);
        assert_eq!(parse_probe(&json!({"tcpSocket": {"port": "53"}})).unwrap().action, ProbeAction::Tcp { port: 53 });
    }

    #[test]
    fn bad_probes_say_why() {
        for (probe, want) in [
            (json!("yes"), "must be a mapping"),
            (json!({}), "needs one of"),
            (json!({"exec": {"command": []}, "tcpSocket": {"port": 1}}), "exactly one"),
            (json!({"httpGet": {"port": "http"}}), "named ports"),
            (json!({"tcpSocket": {"port": 70000}}), "out of range"),
            (json!({"tcpSocket": {"port": 1}, "periodSeconds": -1}), "periodSeconds"),
        ] {
            let err = parse_probe(&probe).unwrap_err();
            assert!(err.contains(want), "{probe}: {err}");
        }
    }
}
