//! A node's identity is not what it says of itself: taking a joined node's
//! place needs a token the operator made for that node, and a node's labels
//! (which place workloads) come from its join and the operator, never from
//! what its agent reports later.

use std::time::Duration;

use fogmesh_tests::*;

const T: Duration = Duration::from_secs(60);

fn master_log(master: &Master) -> String {
    master.proc.as_ref().map(Proc::log_text).unwrap_or_default()
}

#[test]
fn taking_a_nodes_place_needs_a_token_made_for_it_and_labels_are_the_operators() {
    let dir = test_dir("node-identity");
    let mut master = Master::start(&dir);
    let mut first = Agent::join_and_run(&master, "ident-a", "127.0.0.51");
    let _b = Agent::join_and_run(&master, "ident-b", "127.0.0.52");
    wait_for("both nodes ready", T, || (master.node("ident-a")["state"] == "ready" && master.node("ident-b")["state"] == "ready").then_some(()));

    // A plain token, or one made for another node, cannot take ident-a over.
    let refused = Agent::join_with_token(&master, &master.token(), "ident-a", "127.0.0.51", &dir.join("thief-1"), &["--replace"]).err().expect("a plain token must not replace a node");
    assert!(text(&refused.stderr).contains("--replace needs a token made for the node it replaces: fogmesh token create --replace ident-a"), "{}", text(&refused.stderr));
    let for_b = master.cli_ok(&["token", "create", "--replace", "ident-b"]).trim().to_string();
    let refused = Agent::join_with_token(&master, &for_b, "ident-a", "127.0.0.51", &dir.join("thief-2"), &["--replace"]).err().expect("a token for ident-b must not replace ident-a");
    assert!(text(&refused.stderr).contains("this token replaces node 'ident-b', not 'ident-a'"), "{}", text(&refused.stderr));
    // Tokens for nodes that cannot be replaced are not made.
    let out = master.cli(&["token", "create", "--replace", "ghost"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no node named 'ghost'"), "{}", text(&out.stderr));
    let out = master.cli(&["token", "create", "--replace", "ident-a", "--uses", "2"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--uses must be 1"), "{}", text(&out.stderr));
    // The refused joins changed nothing: ident-a's agent is still the node.
    assert!(!first.log_text().contains("another agent took over this node"), "{}", first.log_text());

    // The agent now says it has other labels (its node.json edited): the
    // master logs it and keeps the labels ident-a joined with.
    assert_eq!(master.node("ident-a")["labels"], serde_json::json!({"zone": "test"}));
    first.kill();
    let info_path = first.data_dir.join("node.json");
    let mut info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    info["labels"] = serde_json::json!([["zone", "trusted"], ["fogmesh.node-set", "db"]]);
    std::fs::write(&info_path, info.to_string()).unwrap();
    first.start();
    wait_for("the master logging the labels it does not obey", T, || master_log(&master).contains("agent reports other labels than before").then_some(()));
    assert_eq!(master.node("ident-a")["labels"], serde_json::json!({"zone": "test"}));

    // The operator sets and removes labels.
    let out = master.cli_ok(&["node", "label", "ident-a", "zone=lab", "tier=edge"]);
    assert_eq!(out.trim(), "node ident-a labels: tier=edge, zone=lab");
    master.cli_ok(&["node", "label", "ident-a", "tier-"]);
    assert_eq!(master.node("ident-a")["labels"], serde_json::json!({"zone": "lab"}));
    for (args, why) in [
        (vec!["node", "label", "ident-a", "zone"], "'zone' is neither KEY=VALUE (set) nor KEY- (remove)"),
        (vec!["node", "label", "ident-a", "zone=a b"], "label value 'a b' of 'zone' is not valid"),
        (vec!["node", "label", "ghost", "zone=lab"], "no node named 'ghost'"),
    ] {
        let out = master.cli(&args);
        assert!(!out.status.success() && text(&out.stderr).contains(why), "{args:?}: {}", text(&out.stderr));
    }

    // A restart of both keeps the operator's labels over the agent's.
    master.kill();
    first.kill();
    master.restart();
    first.start();
    wait_for("ident-a back", T, || (master.node("ident-a")["state"] == "ready").then_some(()));
    assert_eq!(master.node("ident-a")["labels"], serde_json::json!({"zone": "lab"}));
}
