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
    },
}

pub async fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { ttl, uses } => {
            let created: TokenCreated = client.send(Method::POST, "/v1/tokens", &CreateToken { ttl_seconds: ttl.as_secs(), uses }).await?;
            println!("{}", created.token);
            let what = if uses == 1 { "single-use join token".to_string() } else { format!("join token for {uses} agents") };
            eprintln!("{what}, valid for {}s: FOGMESH_JOIN_TOKEN=<token> fogmesh-agent run --master HOST:7401 --data-dir DIR ...", ttl.as_secs());
            Ok(())
        }
    }
}
