//! `fogmesh token create`: join tokens for agents.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;

use super::client::Client;
use super::duration_arg;
use crate::model::{CreateToken, TokenCreated};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; prints only the token on stdout so that
    /// `FOGMESH_JOIN_TOKEN=$(fogmesh token create)` works.
    Create {
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = duration_arg)]
        ttl: Duration,
        /// How many agents may join with it (a fleet rollout); default single-use.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// For an agent that takes this joined node's place (a reinstalled
        /// machine): it joins with `--replace`, and the old agent is refused.
        #[arg(long, value_name = "NODE")]
        replace: Option<String>,
    },
}

pub async fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { ttl, uses, replace } => {
            let created: TokenCreated = client.send(Method::POST, "/v1/tokens", &CreateToken { ttl_seconds: ttl.as_secs(), uses, replace: replace.clone() }).await?;
            println!("{}", created.token);
            let what = match (&replace, uses) {
                (Some(node), _) => format!("single-use token for an agent that replaces node {node} (join with --replace)"),
                (None, 1) => "single-use join token".to_string(),
                (None, n) => format!("join token for {n} agents"),
            };
            eprintln!("{what}, valid for {}s: FOGMESH_JOIN_TOKEN=<token> fogmesh-agent run --master HOST:7401 --data-dir DIR ...", ttl.as_secs());
            Ok(())
        }
    }
}
